import os
import sys
import time

from rlsparsity.base import train_tiny_base
from rlsparsity.tasks import get_task

task = get_task('tiny_arith')
out = open(os.path.join(os.environ.get("OUT", "."), "base_sweep.csv"), "a")
for spec in sys.argv[1:]:
    fam, lr, bs = spec.split(":")
    t = time.time()
    m = train_tiny_base(
        fam,
        task,
        f"/tmp/bsw/{fam}_{lr}_{bs}",
        seed=0,
        max_steps=3000,
        batch_size=int(bs),
        lr=float(lr),
        eval_every=100,
        eval_n=200,
        target_accuracy=0.25,
        log=lambda *a: None,
    )
    # chosen on validation only (issue 15): the test accuracy is not written
    out.write(f"{fam},{lr},{bs},{m['steps']},{m['val_accuracy']},{time.time() - t:.1f}\n")
    out.flush()
