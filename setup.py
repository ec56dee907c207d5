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
        # the newest (README, "Deploy with MMDeploy"), which tools/setup_env.sh does for the tests
        'deploy': ['mmdeploy==1.3.1', 'onnxruntime'],
        'tests': ['pytest', 'hypothesis', 'scikit-learn', 'onnx', 'onnxscript>=0.7',
                  'onnxruntime', 'tensorboard'] + MMDEPLOY_RUNTIME + SEG,
        'benchmark': ['torch-pruning==1.6.1', 'matplotlib', 'scikit-learn'],
        # MMSegmentation; mmseg 1.2.2 imports ftfy and regex (its CLIP tokenizer) at import but
        # lists them only in its multimodal requirements
        'seg': SEG,
    },
    zip_safe=False,
)
