"""The examples in the core modules' docstrings run and print what they claim."""

import doctest
import importlib

import numpy as np
import pytest

MODULES = ["dcfmt.huffman", "dcfmt.sparse", "dcfmt.prune", "dcfmt.quantize", "dcfmt.plan",
           "dcfmt.api", "dcfmt.reader", "dcfmt.writer", "dcfmt.lazy", "dcfmt.atomic", "dcfmt.groups"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
