"""model_zoo.get_model's GluonCV signature, pretrained files, and clear errors for bad input."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import gluon_resnest
from conftest import randomize_norm_stats


def _saved(name: str, path, **kwargs):
    net = gluon_resnest.get_model(name, **kwargs)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net)
    net.save_parameters(str(path))
    return net


def test_get_model_is_the_zoo_function():
    assert gluon_resnest.get_model is gluon_resnest.model_zoo.get_model


PACKAGE = Path(gluon_resnest.__file__).resolve().parent


def _import_graph() -> tuple[dict[str, set[str]], set[str]]:
    """The package's modules and what each imports of the package, at any depth of its code
    (lazy imports inside functions too), and the names that are packages (``__init__``)."""
    files = {}
    for path in PACKAGE.rglob('*.py'):
        parts = ('gluon_resnest', *path.relative_to(PACKAGE).with_suffix('').parts)
        is_package = parts[-1] == '__init__'
        files['.'.join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {}
    for name, (path, is_package) in files.items():
        here = name.split('.') if is_package else name.split('.')[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = '.'.join(base + ([node.module] if node.module else []))
                # 'from package import submodule' needs the submodule, not the package's names
                targets = [f'{module}.{alias.name}' if f'{module}.{alias.name}' in files
                           else module for alias in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph, {name for name, (_, is_package) in files.items() if is_package}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_register_gluoncv_and_get_model_are_defined_once():
    from gluon_resnest import gluoncv_bridge, model_zoo
    from gluon_resnest.models import zoo

    assert model_zoo.register_gluoncv is gluoncv_bridge.register_gluoncv
    assert gluon_resnest.register_gluoncv is gluoncv_bridge.register_gluoncv
    assert model_zoo.get_model is zoo.get_model is gluon_resnest.get_model
    defined = {}
    for path in PACKAGE.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and node.name in ('register_gluoncv',
                                                                   'get_model'):
                defined.setdefault(node.name, []).append(path.relative_to(PACKAGE).as_posix())
    assert defined == {'register_gluoncv': ['gluoncv_bridge.py'], 'get_model': ['models/zoo.py']}


def test_no_import_circles():
    """gluoncv_bridge does not import model_zoo, even lazily or through other modules, and no
    module of the package imports itself back (edges into a package's ``__init__`` aside: the
    top-level one imports everything)."""
    graph, packages = _import_graph()
    assert 'gluon_resnest.gluoncv_bridge' in _reachable(graph, 'gluon_resnest.model_zoo')
    assert 'gluon_resnest.model_zoo' not in _reachable(graph, 'gluon_resnest.gluoncv_bridge')
    modules = {name: deps - packages for name, deps in graph.items()}
    circles = sorted(name for name in modules if name in _reachable(modules, name))
    assert not circles, f'modules that import themselves back: {circles}'


def test_the_zoo_works_without_gluoncv():
    """GluonCV is optional: with it unimportable the package, its zoo and its models work, and
    register_gluoncv says what is missing."""
    code = textwrap.dedent("""
        import sys
        sys.modules['gluoncv'] = None  # 'import gluoncv' raises ImportError
        import gluon_resnest.model_zoo as zoo
        net = zoo.get_model('resnest14', classes=3)
        assert type(net).__name__ == 'ResNeSt', net
        try:
            zoo.register_gluoncv()
        except ImportError as err:
            print('ImportError', err)
        assert not [m for m in sys.modules if m.startswith('gluoncv.')]
    """)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'ImportError' in result.stdout and 'gluoncv' in result.stdout


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnest51'.*Did you mean: .*resnest50"):
        gluon_resnest.get_model('resnest51')


def test_names_are_case_insensitive():
    assert gluon_resnest.get_model('ResNeSt14').model_name == 'resnest14'


def test_pretrained_path_and_root(tmp_path):
    ref = _saved('resnest14', tmp_path / 'resnest14.params', classes=5)
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    by_path = gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'resnest14.params'),
                                      classes=5, ctx=mx.cpu())
    by_root = gluon_resnest.get_model('resnest14', pretrained=True, root=str(tmp_path), classes=5)
    np.testing.assert_array_equal(by_path(x).asnumpy(), ref(x).asnumpy())
    np.testing.assert_array_equal(by_root(x).asnumpy(), ref(x).asnumpy())


def test_pretrained_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='no parameter file'):
        gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'resnest14.params'))
    # Not cached and not downloadable (conftest's closed loopback port): the URL and the path.
    with pytest.raises(FileNotFoundError, match=r'cannot fetch http://127\.0\.0\.1:\d+/.*put '
                                                r'the unzipped file \(sha1 7e0b0cae\w+\) at \('
                                                + str(tmp_path) + r'/resnest14-7e0b0cae\.params\)'):
        gluon_resnest.get_model('resnest14', pretrained=True, root=str(tmp_path))


def test_params_of_another_architecture_name_the_parameter(tmp_path):
    _saved('resnest26', tmp_path / 'r26.params')
    with pytest.raises(ValueError, match=r"does not fit resnest14: the file has parameter "
                                         r"'layer1\.1\.conv1\.weight'"):
        gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'r26.params'))
    _saved('resnest101', tmp_path / 'r101.params')
    with pytest.raises(ValueError, match=r"parameter 'conv1\.0\.weight' has shape "
                                         r"\(64, 3, 3, 3\) in the file but \(32, 3, 3, 3\)"):
        gluon_resnest.get_model('resnest50', pretrained=str(tmp_path / 'r101.params'))
    _saved('resnest14', tmp_path / 'r14.params')
    with pytest.raises(ValueError, match=r"it has no parameter 'layer1\.1\.conv1\.weight'"):
        gluon_resnest.get_model('resnest26', pretrained=str(tmp_path / 'r14.params'))


def test_not_a_params_file(tmp_path):
    bad = tmp_path / 'bad.params'
    bad.write_bytes(b'this is not an MXNet file')
    with pytest.raises(ValueError, match='is not an MXNet parameter file'):
        gluon_resnest.get_model('resnest14', pretrained=str(bad))


@pytest.mark.parametrize('hybridize', [False, True])
def test_wrong_input_channels(hybridize):
    net = gluon_resnest.get_model('resnest14')
    net.initialize()
    if hybridize:
        net.hybridize()
    with pytest.raises(ValueError, match=r'expects a batch of images shaped \(N, 3, H, W\), '
                                         r'got an array of shape \(1, 1, 32, 32\)'):
        net(mx.nd.zeros((1, 1, 32, 32)))
    with pytest.raises(ValueError, match='got an array of shape'):
        net(mx.nd.zeros((3, 32, 32)))


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match='output_stride'):
        gluon_resnest.get_model('resnest50', output_stride=4)
    with pytest.raises(ValueError, match='drop probability'):
        gluon_resnest.get_model('resnest50', dropblock_prob=1.5)
    with pytest.raises(TypeError):
        gluon_resnest.get_model('resnest50', no_such_option=1)
