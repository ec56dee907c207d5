import os.path as osp

from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmgfp', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


# what mmdeploy 1.3.1 imports beyond torch, numpy, onnx, mmengine and mmcv
MMDEPLOY_RUNTIME = ['aenum', 'multiprocess', 'prettytable']
SEG = ['mmsegmentation==1.2.2', 'ftfy', 'regex']

setup(
    name='mmgfp',
    version=read_version(),
    description='Group Fisher Pruning (ICML 2021) for MMEngine and OpenMMLab codebases',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools', 'benchmarks')),
    python_requires='>=3.8',
    install_requires=['torch', 'numpy'],
    extras_require={
        'openmmlab': ['mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0', 'mmpretrain==1.2.0'],
        # torch >= 2.9 exports ONNX through torch.export + onnxscript (torch 2.11+'s API: 0.7)
        'export': ['onnx', 'onnxscript>=0.7', 'onnxruntime'],
        # MMDeploy (tools/deploy_mmdeploy.py). mmdeploy 1.3.1's metadata pins protobuf<=3.20.2
        # (its code never imports protobuf), so pip resolves this extra to onnx 1.17 and an
        # older onnxruntime; `pip install --no-deps mmdeploy==1.3.1` over MMDEPLOY_RUNTIME keeps
        # the newest (docs/en/user_guides/deploy.md), which tools/setup_env.sh does for the tests
        'deploy': ['mmdeploy==1.3.1', 'onnxruntime'],
        'tests': ['pytest', 'hypothesis', 'scikit-learn', 'onnx', 'onnxscript>=0.7',
                  'onnxruntime', 'tensorboard'] + MMDEPLOY_RUNTIME + SEG,
        # MMYOLO 0.6.0 (its last release) asserts mmcv < 2.1.0 at import: mmgfp bridges the
        # gate (custom_imports=['mmgfp', 'mmgfp.yolo']; docs/en/user_guides/prune_yolo.md)
        'yolo': ['mmyolo==0.6.0'],
        # MMPose. Its xtcocotools dependency must be built from its sdist first (the wheels are
        # built against another numpy ABI: "numpy.dtype size changed"); tools/setup_env.sh does
        # it. chumpy (SMPL only, never imported by mmpose) builds from its sdist as it is.
        'pose': ['mmpose==1.3.2', 'xtcocotools==1.14.3'],
        'benchmark': ['torch-pruning==1.6.1', 'matplotlib', 'scikit-learn'],
        # the documentation (docs/en, built by tests/docs/test_docs.py); versions installed and
        # tested together on Python 3.11 (Sphinx 9 needs >= 3.11)
        'docs': ['sphinx==9.0.4', 'myst-parser==5.2.0', 'furo==2025.12.19'],
        # MMSegmentation; mmseg 1.2.2 imports ftfy and regex (its CLIP tokenizer) at import but
        # lists them only in its multimodal requirements
        'seg': SEG,
    },
    zip_safe=False,
)
