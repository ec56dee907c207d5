# Group Fisher pruning of retinanet_r18_fpn_digits.py down to 50% of its measured CPU latency,
# then fine-tuning with the masks fixed.
# delta='latency': Fisher importance per microsecond the removal saves on the deploy device.
# The latency table is profiled when training starts (main process, a copy of the model) at
# the deploy settings given here - this CPU, batch 1, the 128x128 canvas, one thread - and
# written to the work dir as latency_table.json (reused on resume). To deploy elsewhere,
# profile that device with tools/profile_latency.py and give latency_table='TABLE.json'.
#   python tools/train.py configs/digits/retinanet_r18_fpn_digits.py
#   python tools/train.py configs/digits/retinanet_r18_fpn_digits_gfp_latency.py
# Crossing 75% / 50% of the predicted latency saves pruned_latency_0.75.{pth,json} and
# pruned_latency_0.50.{pth,json}; tools/deploy_pruned.py ... --measure compares the predicted
# with the measured latency of the compact model. benchmarks/accuracy_latency.py compares this
# with acts/flops/Torch-Pruning at equal latency (docs/en/benchmarks/accuracy_latency.md).
_base_ = './retinanet_r18_fpn_digits_gfp_acts.py'

custom_hooks = [
    dict(
        type='FisherPruningHook',
        interval=5,
        delta='latency',
        target=0.5,
        target_metric='latency',
        channels_per_step=32,
        divisor='auto',  # the widths the table measured as paying off (multiples of 16 in
                         # the stem and layer1 on this CPU), 1 elsewhere
        latency_table=dict(device='cpu', batch=1, input_size=(128, 128), threads=1),
        save_thresholds=(0.75, 0.5)),
]
