"""benchmarks/pseudo_label_check.py: the matching of detections to ground truth, and its
arguments."""
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import pseudo_label_check as P  # noqa: E402


def test_each_ground_truth_box_is_matched_once_and_only_by_its_class():
    gt = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    gt_labels = torch.tensor([1, 2])
    boxes = torch.tensor([[0., 0., 10., 10.],     # right
                          [0., 0., 10., 9.],      # the same object again: not counted twice
                          [20., 20., 30., 30.],   # the right place, the wrong class
                          [50., 50., 60., 60.]])  # nothing there
    labels = torch.tensor([1, 1, 3, 1])
    assert P.matches(boxes, labels, gt, gt_labels) == 1
    assert P.matches(boxes[:1], labels[:1], gt[:0], gt_labels[:0]) == 0
    assert P.matches(torch.tensor([[20., 20., 30., 30.]]), torch.tensor([2]), gt,
                     gt_labels) == 1


def test_bad_arguments_are_named(tmp_path, capsys):
    cfg = tmp_path / 'c.py'
    cfg.write_text('x = 1')
    for argv, message in (([str(cfg), str(cfg), '--images', '5:5'], 'END > START'),
                          ([str(cfg), str(cfg), '--thr', '0'], 'scores in (0, 1]'),
                          ([str(cfg), str(tmp_path / 'no.pth')], 'no such file')):
        with pytest.raises(SystemExit):
            P.parse_args(argv)
        assert message in capsys.readouterr().err
