#!/bin/bash
# Each companion method (README: "Companion methods") against plain Cal-QL on the pointmaze_o2o cpu setting, same
# seeds; the figures are in docs/results/README.md. Plain Cal-QL: the study's calql runs (o2o-study pointmaze_o2o).
#   scripts/measure_companions.sh [seeds...]    (default 0 1), then: o2o-report --experiment companions
set -e
for seed in ${@:-0 1}; do
  for variant in "ooo:exploration=rnd retrain=ooo" "qknn:exploration=qknn exploration.coef=1.0" \
                 "regression:reference=regression" "td:reference=td"; do
    name=${variant%%:*}
    python src/main.py experiment=study/pointmaze_o2o/cpu algo=calql seed=$seed ${variant#*:} \
      mlflow_experiment=companions run_name=$name-s$seed progress=false threads=1
  done
done
