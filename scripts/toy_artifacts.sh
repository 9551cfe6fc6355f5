#!/usr/bin/env bash
# Every committed result in artifacts/toy, made anew with the current code and the shipped toy
# weights: the paper's protocol (reproduce), the subnetwork runs of docs/subnetworks.md, the
# persona-vector runs of scripts/vectors_artifacts.sh (its toy part), then the report page and the
# manifest. Run from the repository root on a clean checkout (the datasets record the commit;
# uncommitted changes mark it "+dirty"). About ten CPU minutes on two cores.
set -euo pipefail
T=artifacts/toy
np() { python -m nnsight_persona.cli "$@"; }

np reproduce --out-dir $T --no-progress --overwrite

# Persona subnetworks (docs/subnetworks.md): contrastive (relu), Wanda, and the structured variant.
np subnetwork find --model toy --set toy --sparsity 0.1,0.3,0.5,0.7 --out $T/subnetwork-find-toy.nc --no-progress --overwrite
np subnetwork eval $T/subnetwork-find-toy-masks.safetensors --random-seeds 5 --out $T/subnetwork-eval-toy.nc \
  --no-progress --overwrite
np subnetwork find --model toy --set toy --sparsity 0.1,0.3,0.5,0.7 --method wanda --out $T/subnetwork-find-toy-wanda.nc \
  --masks runs/toy/subnetwork-find-toy-wanda-masks.safetensors --no-progress --overwrite
np subnetwork eval runs/toy/subnetwork-find-toy-wanda-masks.safetensors --random-seeds 5 \
  --out $T/subnetwork-eval-toy-wanda.nc --no-progress --overwrite
np subnetwork find --model toy --set toy --sparsity 0.1,0.3,0.5,0.7 --structured --out $T/subnetwork-find-toy-structured.nc \
  --no-progress --overwrite
np subnetwork eval $T/subnetwork-find-toy-structured-masks.safetensors --random-seeds 5 \
  --out $T/subnetwork-eval-toy-structured.nc --no-progress --overwrite

bash scripts/vectors_artifacts.sh toy

np report $T
python -c "from nnsight_persona.storage.manifest import write_manifest; write_manifest('$T', command=\
'nnsight-persona reproduce --out-dir artifacts/toy --no-progress --overwrite; then the subnetwork and vectors \
commands of scripts/toy_artifacts.sh; then nnsight-persona report artifacts/toy')"
