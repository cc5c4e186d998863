"""Placeholder: being written."""


def avg_pool(*args, **kwargs):
    raise NotImplementedError("avg_pool")


def lp_pool(*args, **kwargs):
    raise NotImplementedError("lp_pool")


def max_pool(*args, **kwargs):
    raise NotImplementedError("max_pool")


def min_pool(*args, **kwargs):
    raise NotImplementedError("min_pool")


def sum_pool(*args, **kwargs):
    raise NotImplementedError("sum_pool")
