"""Digits data sets shared by the Runner tests of this folder (made once per test module)."""
import pytest

from runner_utils import CLS_GEN, DET_GEN


@pytest.fixture(scope='module')
def det_data(tmp_path_factory):
    from mmgfp.datasets.digits import prepare_digits_det
    root = str(tmp_path_factory.mktemp('digits_det'))
    prepare_digits_det(root, **DET_GEN)
    return root


@pytest.fixture(scope='module')
def cls_data(tmp_path_factory):
    from mmgfp.datasets.digits import prepare_digits_cls
    root = str(tmp_path_factory.mktemp('digits_cls'))
    prepare_digits_cls(root, **CLS_GEN)
    return root
