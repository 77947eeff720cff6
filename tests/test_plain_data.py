"""Summaries written as YAML: numpy and torch values become plain Python values that
``yaml.safe_dump`` accepts, with floats rounded to the requested digits."""

import numpy as np
import torch
import yaml

from nas._io import plain_data


def test_numpy_and_torch_scalars_nested_in_tuples_and_dicts_become_plain_and_rounded():
    value = {1: (np.float64(0.123456789), torch.tensor(2.5)), "n": np.int64(7), "v": torch.__version__}
    plain = plain_data(value, digits=3)
    assert plain == {"1": [0.123, 2.5], "n": 7, "v": str(torch.__version__)}
    assert type(plain["n"]) is int and type(plain["v"]) is str
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain


def test_default_rounding_keeps_five_digits_and_leaves_other_types_alone():
    assert plain_data([1 / 3, None, True, "x"]) == [0.33333, None, True, "x"]
