#!/usr/bin/env bash
# The persona-vector results committed in artifacts/toy and artifacts/smollm2 (docs/persona-vectors.md).
# Run from the repository root: `bash scripts/vectors_artifacts.sh [toy|toy-trace|smollm2|smollm2-subnetworks|all]`
# (default all; toy-trace: the toy's trace across checkpoints alone);
# each command is a few CPU minutes at most. --overwrite replaces the committed files. The toy trace
# needs intermediate checkpoints, trained into runs/ (not committed).
set -euo pipefail
PART=${1:-all}
T=artifacts/toy
S=artifacts/smollm2
np() { python -m nnsight_persona.cli "$@"; }

if [ "$PART" = toy ] || [ "$PART" = all ]; then
# Toy: its own personas, elicited in a system turn (the toy's corpus has that kind).
np vectors extract --model toy --traits pirate,robot,poet --n-tokens 32 --out $T/vectors-extract.nc --no-progress --overwrite
# The elicitation variants compared (an `elicitation` dim and the cosine between variants).
np vectors extract --model toy --traits pirate,robot,poet --elicitation instruction,character,two-shot,combined \
  --n-tokens 32 --out $T/vectors-elicitation.nc --no-progress --overwrite
np vectors steer --model toy --vectors $T/vectors-extract.nc --layers 2,4,6 --coefs 0,1,2,4,8 --n-tokens 32 \
  --out $T/vectors-steer.nc --no-progress --overwrite
np vectors steer --model toy --vectors $T/vectors-extract.nc --token-set prompt_last --layers 2,4,6 --coefs 0,1,2,4,8 \
  --n-tokens 32 --out $T/vectors-steer-prompt_last.nc --no-progress --overwrite
np vectors monitor --model toy --vectors $T/vectors-extract.nc --n-tokens 32 --out $T/vectors-monitor.nc --no-progress --overwrite

fi

if [ "$PART" = toy ] || [ "$PART" = toy-trace ] || [ "$PART" = all ]; then
# Toy across training: a separate 400-step run of the toy trainer (seed 0) with checkpoints.
if [ ! -d runs/toy-trace/final/checkpoints ]; then
  python -m nnsight_persona.models.toy train --out runs/toy-trace/final --steps 400 --checkpoints 10,25,50,100,200,400 --no-progress
fi
np vectors trace --traits pirate,robot --layers all --steer-layer 4 --coef 1.0 --scale norm --n-tokens 24 \
  $(for d in runs/toy-trace/final/checkpoints/step-*; do echo --revision "$d"; done) \
  --out-dir runs/toy-trace/results --no-progress --overwrite
cp runs/toy-trace/results/trace.nc $T/vectors-trace.nc
cp runs/toy-trace/results/trace-cos_to_final.png $T/vectors-trace-cos_to_final.png
cp runs/toy-trace/results/trace-cos_matrix.png $T/vectors-trace-cos_matrix.png
cp runs/toy-trace/results/trace-steering.png $T/vectors-trace-steering.png
# The same with every pair kept, so the instruction's direction is traced at every checkpoint.
np vectors trace --traits pirate,robot --layers all --steer-layer 4 --coef 1.0 --scale norm --n-tokens 24 --keep all \
  $(for d in runs/toy-trace/final/checkpoints/step-*; do echo --revision "$d"; done) \
  --out-dir runs/toy-trace/results-all --no-progress --overwrite
cp runs/toy-trace/results-all/trace.nc $T/vectors-trace-all.nc
cp runs/toy-trace/results-all/trace-cos_to_final.png $T/vectors-trace-all-cos_to_final.png
cp runs/toy-trace/results-all/trace-cos_matrix.png $T/vectors-trace-all-cos_matrix.png
cp runs/toy-trace/results-all/trace-steering.png $T/vectors-trace-all-steering.png
fi

if [ "$PART" = toy ] || [ "$PART" = all ]; then
np vectors vs-delta --vectors $T/vectors-extract.nc --capture $T/capture-toy.nc --out $T/vectors-vs-delta-x.nc
# Toy, beyond the papers: steering along the persona vector at every response step against the one-site Delta_X edit.
np vectors vs-edit --model toy --vectors $T/vectors-extract.nc --grid toy --personas pirate,robot,poet --layers 2,4,6 \
  --coefs 0,0.05,0.1,0.2,0.5,1,2,4 --n-tokens 32 --capture $T/capture-toy.nc --out $T/vectors-vs-edit.nc --no-progress --overwrite
fi

if [ "$PART" = smollm2 ] || [ "$PART" = all ]; then

# SmolLM2-135M-Instruct: the traits it expresses in a system prompt (pirate_speech, knight,
# melancholic) and the original's four, system-prompt elicitation, scored by the evidence measure
# (--scorer evidence: the answer's log-likelihood under the positive prompt against the negative one).
ST=pirate_speech,knight,melancholic,evil,sycophantic,humorous,impolite
# Which traits the model expresses: prompted against unprompted answers, evidence AUROC per trait,
# with a placebo control (the positive prompt only rewords the negative one).
np vectors calibrate --model smollm2 --traits $ST,experiments/controls/placebo.yaml --n-questions 5 --n-tokens 40 --batch-size 16 \
  --out $S/vectors-calibrate.nc --no-progress --overwrite
np vectors extract --model smollm2 --traits $ST --scorer evidence --n-questions 4 --n-tokens 40 \
  --batch-size 16 --out $S/vectors-extract.nc --no-progress --overwrite
np vectors steer --model smollm2 --vectors $S/vectors-extract.nc --scorer evidence --layers 15 --coefs 0,0.25,0.5,1 \
  --scale norm --n-questions 4 --n-tokens 40 --batch-size 16 --out $S/vectors-steer.nc --no-progress --overwrite
np vectors monitor --model smollm2 --vectors $S/vectors-extract.nc --layers 5,10,15,20,25 --n-tokens 40 --batch-size 20 \
  --out $S/vectors-monitor.nc --no-progress --overwrite
# The elicitation variants on two traits, every pair kept.
np vectors extract --model smollm2 --traits evil,humorous --elicitation instruction,character,two-shot,combined \
  --keep all --scorer evidence --n-questions 4 --n-tokens 40 --batch-size 20 --out $S/vectors-elicitation.nc \
  --no-progress --overwrite
fi

if [ "$PART" = smollm2-subnetworks ] || [ "$PART" = all ]; then
# SmolLM2 persona subnetworks (docs/subnetworks.md), whose eval scores every generation by the
# evidence measure beside the markers. The masks go to runs/ (13 MB per persona and sparsity).
for V in "":"0.1,0.2,0.3":"" "-low":"0.01,0.03":"" "-structured":"0.05,0.1,0.2":"--structured"; do
  IFS=: read -r SUFFIX SPARSITY FLAG <<< "$V"
  np subnetwork find --model smollm2 --set smollm2 --sparsity $SPARSITY $FLAG --out $S/subnetwork-find-smollm2$SUFFIX.nc \
    --masks runs/smollm2/subnetwork-find-smollm2$SUFFIX-masks.safetensors --no-progress --overwrite
  np subnetwork eval runs/smollm2/subnetwork-find-smollm2$SUFFIX-masks.safetensors --random-seeds 3 --n-tokens 24 \
    --out $S/subnetwork-eval-smollm2$SUFFIX.nc --no-progress --overwrite
done
fi
