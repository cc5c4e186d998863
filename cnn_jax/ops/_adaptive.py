"""Placeholder: being written."""


def adaptive_avg_pool(*args, **kwargs):
    raise NotImplementedError("adaptive_avg_pool")


def adaptive_max_pool(*args, **kwargs):
    raise NotImplementedError("adaptive_max_pool")


def global_avg_pool(*args, **kwargs):
    raise NotImplementedError("global_avg_pool")


def global_max_pool(*args, **kwargs):
    raise NotImplementedError("global_max_pool")
