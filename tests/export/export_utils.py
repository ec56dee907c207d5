"""What the export tests share: a config pruned at random into a checkpoint (with its spec), and
one run of tools/deploy_mmdeploy.py per model, cached for the tests of a module."""
from typing import Callable, Dict, Sequence

import torch
import torch.nn as nn


def random_pruned(config: str, input_size: Sequence[int], tmp,
                  prepare: Callable[[nn.Module], None]):
    """Build ``config``, give it weights with ``prepare(model)``, mask a random half of every
    group and save ``tmp/pruned.pth`` with the spec; returns ``(model, pruner, ckpt)``."""
    from mmengine.config import Config

    from mmgfp.apis.checking.check import analyze, random_masks
    from mmgfp.core import FisherPruner, make_spec
    found = analyze(Config.fromfile(config), input_size=input_size, batch_size=2, seed=0)
    model = found['model']
    prepare(model)
    pruner = FisherPruner(model, found['groups'])
    random_masks(pruner, 0.5, seed=2)
    ckpt = str(tmp / 'pruned.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {},
                'mmgfp': {'spec': make_spec(pruner.masker)}}, ckpt)
    return model, pruner, ckpt


def deployed_with_tool(name: str, tmp_path_factory, image: str,
                       compact: Callable[[str, object], Dict], cache: Dict) -> Dict:
    """``compact(name, tmp)`` exported by ``tools/deploy_mmdeploy.py --check`` (once per name:
    kept in ``cache``), with the tool's exit status and the files it wrote."""
    if name not in cache:
        import tools.deploy_mmdeploy as tool
        from mmgfp.apis.deploying import mmdeploy_export as md
        tmp = tmp_path_factory.mktemp(name)
        out = compact(name, tmp)
        out['rc'] = tool.main([out['config'], out['checkpoint'], '--out', str(tmp / 'mmdeploy'),
                               '--image', image, '--check'])
        out['onnx'] = str(tmp / 'mmdeploy' / md.ONNX_FILE)
        out['deploy_cfg'] = str(tmp / 'mmdeploy' / md.DEPLOY_CFG_FILE)
        cache[name] = out
    return cache[name]
