"""Constants shared by the data pipeline, the recipes and deployment."""

#: ImageNet RGB mean and standard deviation on the 0-255 scale.
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)
