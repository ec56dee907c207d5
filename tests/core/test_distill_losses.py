"""Distillation losses: zero at the teacher, pruned channels out of CWD, producer lookup."""
import pytest
import torch
import torch.nn as nn

from mmgfp.core.distill import (box_masks, cwd, fg_mse, kl_logits, mse, producer_group,
                                sigmoid_kl)


def test_losses_are_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.randn(2, 5, 4, 4)
    assert float(cwd(t, t)) == pytest.approx(0, abs=1e-6)
    assert float(kl_logits(t, t, tau=2.0)) == pytest.approx(0, abs=1e-6)
    s = t + torch.randn_like(t)
    assert float(cwd(s, t)) > 0 and float(kl_logits(s, t)) > 0
    logits = torch.randn(3, 10)
    ref = torch.nn.functional.kl_div(torch.log_softmax(logits / 2, 1),
                                     torch.softmax(logits.flip(0) / 2, 1),
                                     reduction='batchmean') * 4
    assert float(kl_logits(logits, logits.flip(0), tau=2.0)) == pytest.approx(float(ref),
                                                                               rel=1e-5)


def test_cwd_leaves_pruned_channels_out_and_keeps_the_others_weight():
    t = torch.randn(2, 4, 3, 3)
    s = t.clone()
    s[:, 1] = torch.randn(2, 3, 3) * 10  # a pruned channel: whatever the student holds there
    s[:, 2] += torch.randn(2, 3, 3)
    keep = torch.tensor([True, False, True, True])
    only_2 = cwd(s[:, 2:3], t[:, 2:3]) / 4  # channel 2's term, normalised by all 4 channels
    assert float(cwd(s, t, keep=keep)) == pytest.approx(float(only_2), rel=1e-5)
    assert float(cwd(s, t)) > float(cwd(s, t, keep=keep))
    with pytest.raises(ValueError, match='differ'):
        cwd(s[:, :3], t)


def test_producer_group_walks_through_norm_and_activation():
    conv, bn = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
    x = torch.randn(2, 3, 4, 4)
    producers = {id(conv.weight): 'g', id(conv.bias): 'g'}
    assert producer_group(torch.relu(bn(conv(x))), producers) == 'g'
    assert producer_group(torch.cat([conv(x), conv(x)], 1), producers) is None
    with torch.no_grad():
        assert producer_group(conv(x), producers) is None


def _binary_kl(s, t, tau):
    """Per-element binary KL by the cross-entropy identity KL = CE(p_t, p_s) - H(p_t)."""
    p_t = torch.sigmoid(t / tau)
    ce = nn.functional.binary_cross_entropy_with_logits
    return (ce(s / tau, p_t, reduction='none') - ce(t / tau, p_t, reduction='none')) * tau**2


def test_sigmoid_kl_is_zero_with_zero_gradient_at_the_teacher():
    levels = [torch.randn(2, 6, 4, 4), torch.randn(2, 6, 2, 2)]
    student = [t.clone().requires_grad_() for t in levels]
    loss = sigmoid_kl(student, levels, tau=2.0)
    loss.backward()
    assert float(loss) == pytest.approx(0, abs=1e-6)
    assert all(float(s.grad.abs().max()) < 1e-7 for s in student)
    assert float(sigmoid_kl([t + 0.5 for t in levels], levels)) > 0
    assert float(mse(levels, levels)) == 0 and float(mse([t + 1 for t in levels], levels)) > 0


def test_sigmoid_kl_pools_the_levels_and_sums_the_channels():
    t = [torch.randn(2, 6, 4, 4) * 3, torch.randn(2, 6, 2, 2) * 3]
    s = [torch.randn_like(x) * 3 for x in t]
    positions = 2 * 16 + 2 * 4  # images x positions, both levels
    want = sum(_binary_kl(a, b, 2.0).sum() for a, b in zip(s, t)) / positions
    assert float(sigmoid_kl(s, t, tau=2.0)) == pytest.approx(float(want), rel=1e-5)
    assert float(sigmoid_kl(s[0], t[0])) == pytest.approx(
        float(_binary_kl(s[0], t[0], 1.0).sum() / 32), rel=1e-5)
    want_mse = sum((a - b).pow(2).sum() for a, b in zip(s, t)) / positions
    assert float(mse(s, t)) == pytest.approx(float(want_mse), rel=1e-5)
    with pytest.raises(ValueError, match='differ'):
        sigmoid_kl([s[0][:, :3]], [t[0]])
    with pytest.raises(ValueError, match='1 student tensors but 2'):
        sigmoid_kl(s[:1], t)


def test_sigmoid_kl_gradient_pulls_the_scores_towards_the_teachers():
    t = torch.randn(2, 6, 4, 4) * 3
    s = (t + torch.randn_like(t) * 2).requires_grad_()
    sigmoid_kl(s, t, tau=2.0).backward()
    differ = (s - t).abs() > 1e-3
    assert torch.equal(torch.sign(s.grad)[differ], torch.sign(s - t).detach()[differ])
    gap = (torch.sigmoid(s) - torch.sigmoid(t)).abs().sum()
    stepped = s.detach() - 10.0 * s.grad
    assert float((torch.sigmoid(stepped) - torch.sigmoid(t)).abs().sum()) < float(gap)


def test_box_masks_cover_every_overlapped_cell_on_every_level():
    boxes = [torch.tensor([[10., 20., 30., 28.]]), torch.zeros(0, 4)]
    fine, coarse = box_masks(boxes, (64, 64), [(8, 8), (1, 1)])
    # stride 8: columns 10//8=1 .. ceil(30/8)=4 (exclusive), rows 20//8=2 .. ceil(28/8)=4
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[2:4, 1:4] = True
    assert torch.equal(fine[0], want)
    assert not fine[1].any(), 'an image without boxes covers nothing'
    assert coarse[0].all() and coarse.shape == (2, 1, 1), 'a box marks a cell on every level'
    # a box past the border is clipped, an empty one ignored; non-square strides
    edge, = box_masks([torch.tensor([[60., -5., 90., 3.], [5., 5., 5., 9.]])], (32, 64),
                      [(4, 16)])
    assert edge[0, 0, 15] and edge[0].sum() == 1
    # a box wholly outside the input covers nothing (not the wrapped-around rest of a row)
    out, = box_masks([torch.tensor([[-40., 10., -10., 20.], [10., 200., 20., 300.]])],
                     (64, 64), [(8, 8)])
    assert not out.any()
    # an 800-pixel input at stride 64 has 13 cells (rounded up): the stride is 64, not 61.5
    p6, = box_masks([torch.tensor([[740., 0., 760., 10.]])], (800, 800), [(13, 13)])
    assert p6[0, 0].nonzero().flatten().tolist() == [11]  # 61.5 would give [12]
    with pytest.raises(ValueError, match=r'\(K, 4\) boxes'):
        box_masks([torch.zeros(2, 5)], (64, 64), [(8, 8)])


def test_fg_mse_reads_only_the_boxes_and_the_kept_channels():
    t = torch.randn(2, 4, 4, 4)
    masks = [torch.zeros(2, 4, 4, dtype=torch.bool)]
    masks[0][0, 1:3, 1:3] = True
    assert float(fg_mse([t], [t], masks)) == 0
    s = t.clone()
    s[:, :, 0, 0] += 5  # background: not compared
    s[:, 1] += 100  # a pruned channel: not compared either
    keep = torch.tensor([True, False, True, True])
    assert float(fg_mse([s], [t], masks, [keep])) == 0
    s[0, 2, 1, 1] += 3
    norm = t[0][:, 1:3, 1:3].pow(2).sum()  # over all channels, the pruned one too
    assert float(fg_mse([s], [t], masks, [keep])) == pytest.approx(9 / float(norm), rel=1e-5)
    # relative: scaling both maps leaves it unchanged; pooled over the levels
    assert float(fg_mse([3 * s], [3 * t], masks, [keep])) == pytest.approx(
        9 / float(norm), rel=1e-5)
    two = fg_mse([s, t], [t, t], masks * 2, [keep, None])
    assert float(two) == pytest.approx(9 / float(2 * norm), rel=1e-5)


def test_fg_mse_without_boxes_is_a_zero_with_a_graph():
    s = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = fg_mse([s], [torch.randn(1, 3, 2, 2)], [torch.zeros(1, 2, 2, dtype=torch.bool)])
    loss.backward()
    assert float(loss) == 0 and s.grad is not None and not s.grad.any()
    with pytest.raises(ValueError, match='masks'):
        fg_mse([s], [s.detach()], [])


def test_box_mse_weighs_each_anchor_by_the_teachers_score():
    """Two anchors, two classes, one level: the anchor the teacher is sure of carries the
    error, the background one (scores near 0) almost none; the result is the weighted mean."""
    from mmgfp.core.distill import box_mse
    cls = torch.tensor([[8.0, -8.0], [-9.0, -9.0]]).reshape(1, 4, 1, 1)  # anchor 0 sure
    t_box = torch.zeros(1, 8, 1, 1)
    s_box = t_box.clone()
    s_box[0, 4:8] = 5.0  # the background anchor's box is far off
    w_bg = float(torch.sigmoid(torch.tensor(-9.0)))
    w_fg = float(torch.sigmoid(torch.tensor(8.0)))
    got = float(box_mse((cls, s_box), (cls, t_box)))
    assert got == pytest.approx(w_bg * 100 / (w_fg + w_bg), rel=1e-4) and got < 0.02
    s_box = t_box.clone()
    s_box[0, 0:4] = 0.5  # the sure anchor off by 0.5 in each value: 4 * 0.25 = 1
    got = float(box_mse((cls, s_box), (cls, t_box)))
    assert got == pytest.approx(w_fg / (w_fg + w_bg), rel=1e-4)
    assert float(box_mse((cls, t_box), (cls, t_box))) == 0


def test_box_mse_pools_levels_has_no_gradient_into_the_scores_and_names_bad_shapes():
    from mmgfp.core.distill import box_mse
    torch.manual_seed(0)
    cls = [torch.randn(2, 9 * 3, 4, 4), torch.randn(2, 9 * 3, 2, 2)]  # 9 anchors, 3 classes
    t_box = [torch.randn(2, 36, 4, 4), torch.randn(2, 36, 2, 2)]
    s_box = [(t + torch.randn_like(t)).requires_grad_() for t in t_box]
    s_cls = [c.clone().requires_grad_() for c in cls]
    loss = box_mse((s_cls, s_box), (cls, t_box))
    w = [torch.sigmoid(c.reshape(2, 9, 3, *c.shape[2:])).amax(2) for c in cls]
    d = [(s - t).detach().reshape(2, 9, 4, *s.shape[2:]).pow(2).sum(2) for s, t in zip(s_box, t_box)]
    ref = sum((a * b).sum() for a, b in zip(w, d)) / sum(a.sum() for a in w)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    assert all(c.grad is None for c in s_cls), 'the student class scores get no gradient'
    assert all(float(s.grad.abs().sum()) > 0 for s in s_box)
    with pytest.raises(ValueError, match='do not share anchors of 4 values'):
        box_mse((cls[0], t_box[0][:, :35]), (cls[0], t_box[0][:, :35]))
    with pytest.raises(ValueError, match='2 class-score maps but 1 box maps'):
        box_mse((cls, t_box[:1]), (cls, t_box[:1]))
