# Stage: base models. Tiny families are trained from scratch by supervised learning until
# they have a policy with headroom; smollm2-135m / hub models are converted as shipped.


rule base:
    output:
        model=f"{R}/base/{{family}}/model.safetensors",
        metrics=f"{R}/base/{{family}}/metrics.json",
    log:
        f"{R}/logs/base/{{family}}.log",
    benchmark:
        f"{R}/benchmarks/base/{{family}}.tsv"
    resources:
        mem_mb=base_mem_mb,
        runtime=base_runtime,
    threads: base_threads
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rlsparsity build-base {wildcards.family} "
        "--out {R}/base/{wildcards.family} --config {CONFIG_JSON} > {log} 2>&1"


TARGETS["base"] = [f"{R}/base/{f}/metrics.json" for f in FAMILIES]


rule bases:
    input:
        TARGETS["base"],
