import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

for p in sys.argv[1:]:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.enable_profiling = True
    o.profile_file_prefix = "prof_" + os.path.basename(p)
    s = ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    feeds = {
        "input_ids": np.random.randint(1000, 20000, (1, 128)).astype(np.int64),
        "attention_mask": np.ones((1, 128), np.int64),
        "token_type_ids": np.zeros((1, 128), np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(30):
        s.run(None, feeds)
    f = s.end_profiling()
    ev = json.load(open(f))
    agg = collections.Counter()
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    tot = sum(agg.values())
    print(p, "total ms/run", tot / 30 / 1000)
    for k, v in agg.most_common(8):
        print(f"  {k:28s} {v / 30 / 1000:7.2f} ms")
