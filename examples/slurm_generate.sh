#!/bin/bash
# Sharded `medsynth generate` as a Slurm array job, then one merge job.
#
#   sbatch examples/slurm_generate.sh            # 4 array tasks, each one shard of the run
#   # when all have finished (or: sbatch --dependency=afterok:<jobid> --wrap "...merge-shards..."):
#   medsynth merge-shards run/shard-* -o run/merged
#
# medsynth reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (and SLURM_ARRAY_TASK_MIN), so no
# --shard is needed: task i of n writes the patients p with p % n == i. Every task must be given the
# same options; --seed and --reproducible-uids make the union of the shards the run one job would
# have written, file for file. Change --array (e.g. 0-15) to change the number of shards.
#SBATCH --job-name=medsynth-generate
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=medsynth-%A_%a.log
set -euo pipefail

RUN_DIR=${RUN_DIR:-run}
SEED=${SEED:-2026}

medsynth generate --modality ct-chest --patients 200 --studies 2 --slices 32 \
    --seed "$SEED" --reproducible-uids --threads "${SLURM_CPUS_PER_TASK:-1}" \
    -o "$RUN_DIR/shard-$SLURM_ARRAY_TASK_ID" --json > "$RUN_DIR-shard-$SLURM_ARRAY_TASK_ID.json"
