import json, sys
d = json.load(open(sys.argv[1]))
for r in d["results"]:
    if "error" in r:
        print(r["preset"], r["error"], r.get("phases"), r.get("log_tail", "")[-1500:])
        continue
    print(r["preset"], json.dumps({k: r.get(k) for k in ("engine_start_s", "first_fill_prefill", "num_blocks", "capacity_tokens",
          "max_num_seqs", "tokens_per_s", "peak_running", "preemptions", "ms_per_step", "process_s", "kvarn_warnings")}))
    for p in r["passes"]:
        print("   pass", json.dumps(p))
