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
    params:
        # pretrained bases of GPU families are evaluated on the GPU (a packed slot)
        env=lambda wc: gpu_env(wc.family),
        device=lambda wc: family_device(wc.family),
    resources:
        mem_mb=4000,
        runtime=60,
        gpu_slots=lambda wc: min(1, family_gpu_slots(wc.family)),
    threads: 1
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "{params.env}OMP_NUM_THREADS={threads} rlsparsity build-base {wildcards.family} "
        "--out {R}/base/{wildcards.family} --config {CONFIG_JSON}{params.device} > {log} 2>&1"


TARGETS["base"] = [f"{R}/base/{f}/metrics.json" for f in FAMILIES]


rule bases:
    input:
        TARGETS["base"],
