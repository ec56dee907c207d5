"""From a pruned checkpoint to a deployable model: the compact config and checkpoint
(``deploy``), ONNX export (``onnx_export``) and MMDeploy (``mmdeploy_export`` over
``mmdeploy_compat``)."""
