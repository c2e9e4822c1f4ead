"""Constants shared by the data pipeline, the recipes and deployment."""

#: ImageNet RGB mean and standard deviation on the 0-255 scale.
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)

#: The paper's image side at 224x224: its training and evaluation crop for every model but
#: ResNeSt-101/200/269 (whose crops are in :data:`gluon_resnest.models.MODEL_SPECS`), and the
#: size its GFLOPs are counted at. Every ``input_size``/``crop`` default of the library.
DEFAULT_CROP = 224

#: The paper's evaluation transform (the authors' ``verify.py``): the center crop is this
#: fraction of the short side, which is first resized to ``ceil(crop / CROP_RATIO)``
#: (224 -> 256); from a 320 crop up, the authors' transform takes ``crop / (crop + 32)`` instead.
CROP_RATIO = 0.875
