# Stage: base models. Tiny families are trained from scratch by supervised learning until
# they have a policy with headroom; smollm2-135m / hub models are converted as shipped.
# Also the job_config rule every config-reading job takes its config from.


# R/config/<stage>/<name>.json: the validated config for job stage/name; remade (and so
# its job rerun) exactly when that job's slice of the config changes (config_slices.py).
rule job_config:
    output:
        json=f"{R}/config/{{stage}}/{{name}}.json",
    log:
        f"{R}/logs/config/{{stage}}/{{name}}.log",
    wildcard_constraints:
        stage="|".join(CS.STAGES),
        name=r"[A-Za-z0-9_.-]+",
    params:
        digest=config_digest,
    run:
        CS.write_job_config(config, output.json, wildcards.stage, wildcards.name, log[0])


localrules:
    job_config,


rule base:
    input:
        config=f"{R}/config/base/{{family}}.json",
    output:
        model=f"{R}/base/{{family}}/model.safetensors",
        metrics=f"{R}/base/{{family}}/metrics.json",
    log:
        f"{R}/logs/base/{{family}}.log",
    benchmark:
        f"{R}/benchmarks/base/{{family}}.tsv"
    conda:
        f"{ENVS}/train.yaml"
    threads: base_threads
    resources:
        mem_mb=base_mem_mb,
        runtime=base_runtime,
        # pretrained bases of GPU families are evaluated on the GPU (a packed slot)
        gpu=lambda wildcards: min(1, family_gpus(wildcards.family)),
        gpu_slots=lambda wildcards: min(1, family_gpu_slots(wildcards.family)),
        gpu_mem_gb=lambda wildcards: job_gpu_mem(wildcards.family),
    params:
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        env=lambda wildcards, resources: gpu_env(wildcards.family, resources.gpu_mem_gb),
        device=lambda wildcards: family_device(wildcards.family),
    shell:
        "{params.env}OMP_NUM_THREADS={threads} rlsparsity build-base {wildcards.family:q} "
        "--out {params.out:q} --config {input.config:q}{params.device} > {log:q} 2>&1"


TARGETS["base"] = [f"{R}/base/{f}/metrics.json" for f in FAMILIES]


rule bases:
    input:
        TARGETS["base"],
