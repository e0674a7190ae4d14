# Device call (twenty-second session): k_attn keeping eight pieces of a key in flight (kiln,
# branch gpu-kloop) against the merge change alone (kiln_u4), and decode attention grouped by
# KV head (`--dev cuda-gqa=all`), after 2,048 tokens and after 32: combine_call.sh with those
# builds. Checks first; the sums keep their order, so greedy text must not change.
# Usage (carry .devbin): bash scripts/gpu/kloop_call.sh
BUILDS="kiln kiln_u4" GQA_ALL=1 exec bash scripts/gpu/combine_call.sh
