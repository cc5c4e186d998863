"""Placeholder: being written."""


def conv(*args, **kwargs):
    raise NotImplementedError("conv")


def conv_input_grad(*args, **kwargs):
    raise NotImplementedError("conv_input_grad")


def conv_kernel_grad(*args, **kwargs):
    raise NotImplementedError("conv_kernel_grad")


def conv_transpose(*args, **kwargs):
    raise NotImplementedError("conv_transpose")


def depthwise_conv(*args, **kwargs):
    raise NotImplementedError("depthwise_conv")


def separable_conv(*args, **kwargs):
    raise NotImplementedError("separable_conv")
