"""GFPDistillHook on a detector head's outputs: ``output=`` picks the class scores (or the box
maps) of every level, ``sigmoid_kl`` / ``mse`` distil them."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmgfp  # noqa: F401
from mmgfp.core.distill import mse, sigmoid_kl
from mmgfp.hooks import GFPDistillHook
from runner_utils import det_config

HEAD = [dict(module='bbox_head', type='sigmoid_kl', output=0, weight=1.0, tau=1.0),
        dict(module='bbox_head', type='mse', output=1, weight=0.5)]


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    """A small RetinaNet-R18 (eval mode: student and teacher see the same BN statistics) and a
    preprocessed batch."""
    from mmgfp.apis.deploying.deploy import build_model
    from mmgfp.apis.inputs import demo_batch
    tmp = tmp_path_factory.mktemp('retinanet')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = build_model(Config.fromfile(det_config(tmp, str(tmp / 'unused'))), init=True)
    data = model.data_preprocessor(demo_batch(model, 2, (96, 96)), True)
    return model.eval(), data


def _losses(model, data, losses, perturb=None):
    """The loss dict of one student step with the hook attached; the student's outputs."""
    model = copy.deepcopy(model)
    hook = GFPDistillHook(losses=losses)
    hook.attach(model)
    if perturb is not None:
        with torch.no_grad():
            perturb(model)
    hook.active = True
    student = []
    handle = model.bbox_head.register_forward_hook(lambda m, a, out: student.append(out))
    out = model.loss(data['inputs'], data['data_samples'])
    handle.remove()
    with torch.no_grad():
        teacher = hook.teacher(data['inputs'], mode='tensor')
    hook.detach(model)
    return out, model, student[0], teacher


def test_head_scores_are_zero_at_the_teacher_and_pulled_towards_it(retinanet):
    model, data = retinanet
    out, student, _, _ = _losses(model, data, HEAD)
    term = out['loss_distill_sigmoid_kl_bbox_head']
    assert float(term) == pytest.approx(0, abs=1e-6)
    assert float(out['loss_distill_mse_bbox_head']) == pytest.approx(0, abs=1e-8)
    grads = torch.autograd.grad(term, [student.bbox_head.retina_cls.weight])
    assert float(grads[0].abs().max()) < 1e-6

    def shift(m):
        m.bbox_head.retina_cls.bias += 0.5  # every class score up
    out, student, s_out, t_out = _losses(model, data, HEAD, perturb=shift)
    term = out['loss_distill_sigmoid_kl_bbox_head']
    # output=0 is the class scores of all five levels, output=1 the box maps
    assert len(s_out[0]) == 5 and len(t_out[0]) == 5
    assert float(term) == pytest.approx(float(sigmoid_kl(s_out[0], t_out[0])), rel=1e-5)
    assert float(out['loss_distill_mse_bbox_head']) == pytest.approx(
        0.5 * float(mse(s_out[1], t_out[1])), abs=1e-8)
    bias = student.bbox_head.retina_cls.bias
    grad, = torch.autograd.grad(term, [bias])
    assert float(term) > 0 and bool((grad > 0).all()), 'the gradient lowers the raised scores'


def test_bad_output_index_is_named(retinanet):
    model, data = retinanet
    with pytest.raises(ValueError, match=r"output=2 of module 'bbox_head', but it returns a "
                                         r'tuple of 2'):
        _losses(model, data, [dict(module='bbox_head', type='sigmoid_kl', output=2)])
    with pytest.raises(ValueError, match='returns a tuple'):
        _losses(model, data, [dict(module='neck', type='cwd', output=9)])
    with pytest.raises(ValueError, match='an index'):
        GFPDistillHook(losses=[dict(module='bbox_head', type='sigmoid_kl', output='cls')])
    with pytest.raises(ValueError, match='both log as'):
        GFPDistillHook(losses=[dict(module='bbox_head', type='mse', output=0),
                               dict(module='bbox_head', type='mse', output=1)])


def test_head_terms_under_autocast_are_float32_and_finite(retinanet):
    """AMP (bfloat16 autocast on CPU here): the head's class-score KL and box MSE come out in
    float32 and finite, as the grad scaler expects of a loss."""
    model, data = retinanet

    def shift(m):
        m.bbox_head.retina_cls.bias += 0.5
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, _, _, _ = _losses(model, data, HEAD, perturb=shift)
    for key in ('loss_distill_sigmoid_kl_bbox_head', 'loss_distill_mse_bbox_head'):
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]), key
    assert float(out['loss_distill_sigmoid_kl_bbox_head']) > 0


def test_box_mse_reads_the_heads_scores_and_boxes(retinanet):
    """``box_mse`` on the head takes its output's elements 0 and 1 (every level): zero at
    the teacher, the core function's value once the box branch moves, and a clear error on a
    module that returns no (scores, boxes) or when `output` is given."""
    from mmgfp.core.distill import box_mse
    model, data = retinanet
    spec = [dict(module='bbox_head', type='box_mse', weight=2.0)]
    out, _, _, _ = _losses(model, data, spec)
    assert float(out['loss_distill_box_mse_bbox_head']) == pytest.approx(0, abs=1e-8)

    def shift(m):
        m.bbox_head.retina_reg.bias += 0.3
    out, student, s_out, t_out = _losses(model, data, spec, perturb=shift)
    term = out['loss_distill_box_mse_bbox_head']
    assert float(term) == pytest.approx(2.0 * float(box_mse(s_out, t_out)), rel=1e-5)
    assert float(term) == pytest.approx(2.0 * 4 * 0.09, rel=1e-4), 'every anchor off by 0.3'
    grad, = torch.autograd.grad(term, [student.bbox_head.retina_reg.bias])
    assert bool((grad > 0).all())
    with pytest.raises(ValueError, match="needs a module that returns \\(class scores, boxes\\)"):
        _losses(model, data, [dict(module='backbone.conv1', type='box_mse')])
    with pytest.raises(ValueError, match='do not share anchors'):  # the neck: 5 maps
        _losses(model, data, [dict(module='neck', type='box_mse')])
    with pytest.raises(ValueError, match='leave `output` out'):
        GFPDistillHook(losses=[dict(module='bbox_head', type='box_mse', output=1)])


def test_box_terms_refuse_a_head_whose_boxes_scale_in_eval_mode_only(retinanet):
    """FCOS with norm_on_bbox=True multiplies its boxes by the stride in eval mode only: the
    teacher's and the student's boxes are at other scales, so mse/box_mse stop with a clear
    error instead of teaching the wrong boxes."""
    model, data = retinanet
    scaled = copy.deepcopy(model)
    scaled.bbox_head.norm_on_bbox = True
    for kind in ('box_mse', 'mse'):
        with pytest.raises(ValueError, match='norm_on_bbox=True'):
            _losses(scaled, data, [dict(module='bbox_head', type=kind)])
