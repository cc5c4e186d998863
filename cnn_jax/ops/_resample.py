"""Placeholder: being written."""


def fold(*args, **kwargs):
    raise NotImplementedError("fold")


def pixel_shuffle(*args, **kwargs):
    raise NotImplementedError("pixel_shuffle")


def pixel_unshuffle(*args, **kwargs):
    raise NotImplementedError("pixel_unshuffle")


def unfold(*args, **kwargs):
    raise NotImplementedError("unfold")


def upsample(*args, **kwargs):
    raise NotImplementedError("upsample")
