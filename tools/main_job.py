"""The whole workflow on the embedded digits data, in one command.

    python tools/main_job.py [--work-dir work_dirs/main_job] [--fast]

1. train a RetinaNet-R18 baseline briefly (``tools/train.py``),
2. prune it with ``FisherPruningHook`` to half its FLOPs and fine-tune (``tools/train.py``),
3. deploy the pruned checkpoint (``tools/deploy_pruned.py``),
4. evaluate original and compact models with mmdet's test loop (``tools/test.py``),
5. print a table: bbox mAP, FLOPs, params, activations and CPU latency, original vs compact.

The table is also written to ``WORK_DIR/summary.json`` and ``WORK_DIR/summary.md``.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_BASE = osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits.py')
DEFAULT_PRUNE = osp.join(ROOT, 'configs', 'digits', 'retinanet_r18_fpn_digits_gfp_acts.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Baseline -> GFP prune -> deploy -> test')
    parser.add_argument('--work-dir', default='work_dirs/main_job')
    parser.add_argument('--config', default=DEFAULT_BASE, help='baseline config')
    parser.add_argument('--prune-config', default=DEFAULT_PRUNE, help='pruning config')
    parser.add_argument('--fast', action='store_true',
                        help='a few iterations per stage, to check the pipeline (no real mAP)')
    parser.add_argument('--reuse-baseline', action='store_true',
                        help='skip training when WORK_DIR/baseline has a final checkpoint')
    return parser.parse_args(argv)


def _last_checkpoint(work_dir: str) -> str:
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise SystemExit(f'error: no checkpoint was written in {work_dir}')
    with open(path) as f:
        ckpt = f.read().strip()
    return ckpt if osp.isabs(ckpt) else osp.join(work_dir, osp.basename(ckpt))


def _stage(title: str) -> float:
    print(f'\n===== {title} =====', flush=True)
    return time.time()


def _latency(model, batch, repeats: int = 20) -> float:
    """Median seconds of a tensor-mode forward (no post-processing), eval, no grad."""
    import torch
    from mmgfp.apis.inputs import tensor_forward
    fn = tensor_forward(batch)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            t = time.perf_counter()
            fn(model)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(config: str, checkpoint: str, compact_config: str, compact_checkpoint: str,
            input_size=(128, 128)) -> dict:
    """FLOPs/acts (per image, traced), params and CPU latency of both models."""
    import torch
    from mmengine.config import Config
    from mmgfp.apis.checking.check import build_model
    from mmgfp.apis.inputs import demo_batch, loss_forward
    from mmgfp.core import FisherPruner, build_groups, load_spec, masks_from_spec
    torch.set_num_threads(2)
    orig = build_model(Config.fromfile(config), init=False)
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    orig.load_state_dict(state)
    batch = demo_batch(orig, 1, input_size)
    orig.train()
    pruner = FisherPruner(orig, build_groups(orig, loss_forward(batch)))
    spec_path = osp.join(osp.dirname(compact_config), 'channels.json')
    if osp.isfile(spec_path):
        masks_from_spec(pruner.masker, load_spec(spec_path))
    rem = pruner.remaining()
    full = pruner.full
    compact = build_model(Config.fromfile(compact_config), init=False)
    cstate = torch.load(compact_checkpoint, map_location='cpu', weights_only=True)
    compact.load_state_dict(cstate['state_dict'])
    out = {'flops': (full['flops'], full['flops'] * rem['flops']),
           'acts': (full['acts'], full['acts'] * rem['acts']),
           'params': (sum(p.numel() for p in orig.parameters()),
                      sum(p.numel() for p in compact.parameters()))}
    for bs in (1, 8):
        b = demo_batch(orig, bs, input_size)
        lat_o, lat_c = [], []
        for _ in range(3):  # interleave to cancel drift
            lat_o.append(_latency(orig, b, 7))
            lat_c.append(_latency(compact, b, 7))
        out[f'latency_bs{bs}_ms'] = (1e3 * statistics.median(lat_o),
                                    1e3 * statistics.median(lat_c))
    return out


def format_table(res: dict) -> str:
    rows = [('bbox mAP', 'map', '{:.3f}'), ('bbox mAP@0.5', 'map50', '{:.3f}'),
            ('FLOPs / image (MAC)', 'flops', '{:.3e}'), ('params', 'params', '{:,.0f}'),
            ('activations / image', 'acts', '{:.3e}'),
            ('CPU latency bs1 (ms)', 'latency_bs1_ms', '{:.1f}'),
            ('CPU latency bs8 (ms)', 'latency_bs8_ms', '{:.1f}')]
    lines = ['| | original | compact (GFP) | compact / original |', '|---|---|---|---|']
    for label, key, fmt in rows:
        a, b = res[key]
        ratio = f'{b / a:.3f}' if a else '-'
        lines.append(f'| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import mmgfp  # noqa: F401
    import tools.deploy_pruned as deploy_tool
    import tools.test as test_tool
    import tools.train as train_tool
    wd = osp.abspath(args.work_dir)
    os.makedirs(wd, exist_ok=True)
    fast = ['train_cfg.max_iters=12', 'train_cfg.val_interval=1000',
            'default_hooks.checkpoint.interval=6'] if args.fast else []
    t0 = time.time()

    base_wd = osp.join(wd, 'baseline')
    if args.reuse_baseline and osp.isfile(osp.join(base_wd, 'last_checkpoint')):
        print(f'reusing baseline in {base_wd}')
    else:
        _stage('1/4 train the baseline')
        train_tool.main([args.config, '--work-dir', base_wd] +
                        (['--cfg-options'] + fast if fast else []))
    base_ckpt = _last_checkpoint(base_wd)

    _stage('2/4 prune with FisherPruningHook (and fine-tune)')
    prune_wd = osp.join(wd, 'prune')
    prune_opts = [f'load_from={base_ckpt}']
    if args.fast:
        prune_opts += fast + ['custom_hooks.0.interval=2', 'custom_hooks.0.channels_per_step=16']
    train_tool.main([args.prune_config, '--work-dir', prune_wd, '--cfg-options'] + prune_opts)
    prune_ckpt = _last_checkpoint(prune_wd)

    _stage('3/4 deploy the compact model')
    out = deploy_tool.main([args.prune_config, prune_ckpt, '--out-dir', osp.join(wd, 'compact')])

    _stage('4/4 evaluate original and compact models with the test loop')
    m_orig = test_tool.main([args.config, base_ckpt, '--work-dir', osp.join(wd, 'test_orig')])
    m_comp = test_tool.main([out['config'], out['checkpoint'], '--work-dir',
                             osp.join(wd, 'test_compact')])
    res = measure(args.config, base_ckpt, out['config'], out['checkpoint'])
    res['map'] = (m_orig['coco/bbox_mAP'], m_comp['coco/bbox_mAP'])
    res['map50'] = (m_orig['coco/bbox_mAP_50'], m_comp['coco/bbox_mAP_50'])
    table = format_table(res)
    print(f'\n===== result (total {time.time() - t0:.0f} s) =====\n{table}\n')
    print(f'compact model: {out["config"]}\n               {out["checkpoint"]}')
    with open(osp.join(wd, 'summary.json'), 'w') as f:
        json.dump(res, f, indent=1)
    with open(osp.join(wd, 'summary.md'), 'w') as f:
        f.write(table + '\n')
    return res


if __name__ == '__main__':
    main()
