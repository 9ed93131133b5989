#!/bin/bash
# A/B on the default model: the first round scored in its cut pass (new) vs a statistics pass before the cut (old).
export PRUNEKIT_DATA=${PRUNEKIT_DATA:-../shared/data}
cd "$(dirname "$0")/../../.."  # the checkout
mkdir -p runs/ab
for r in 0.2 0.4; do
  for v in new old; do
    flag=True; [ $v = old ] && flag=False
    s=$(date +%s)
    .venv/bin/python -c "import sys; import prunekit.compress.iterate as I; I.SCORE_IN_CUT=$flag; from prunekit.cli import main; sys.exit(main(sys.argv[1:]))" \
      compress --model default --out runs/ab/$v-$r --ratio $r --threads 2 --force > runs/ab-$v-$r.log 2>&1
    echo "$v $r rc=$? $(( $(date +%s) - s )) s"
  done
done
