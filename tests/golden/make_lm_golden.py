#!/usr/bin/env python3
"""Golden files for the FLM-Audio language model (backbone + depformer + sampling).

This is an independent PyTorch (CPU, float32) reference of one FLM-Audio inference step,
written from the math of the official model (FLM-Audio LMGen, DepthGPT, sample_token), not copied from the
official code. The backbone is `transformers.Qwen2Model` (eager attention, DynamicCache,
position id = step index) fed with `inputs_embeds`; the embedding sum, the heads, the
depformer ("DepthGPT") and the sampling rules are written out below.

Per step t (0-based):
  input ids   text = text token sampled at t-1 (151665 "wait" at t=0)
              speak c = speak token c sampled at t-1 (2048 "pad" at t=0)
              listen 0 = user code[0][t]; listen q>=1 = user code[q][t-1] (2048 at t=0)
              (this is the INTENDED step-0 column of the official LMGen, spec 0.3/2.4,
              not the all-zero column that its reset() leaves since commit eebcb4a)
  embedding   text_emb[text] + sum_c (speak_emb[c][speak_c] + listen_emb[q=c][listen_c]),
              times input_mult (muP; 1.0)
  backbone    Qwen2 decoder, KV cached, final norm -> h_t; text logits = lm_head(h_t) times
              output_mult / mup_scale_factor (muP; 28/28 = 1)
  text token  repetition penalty 1.03 over the text tokens of the previous up-to-50 steps
              (none at t=0), then argmax (official sample_token with use_sampling=False)
  depformer   8 sub-steps i, full recompute over positions 0..i (equal to the KV-cached
              form): x_p = wtes[p](prev_p) + wpe[p] + linear_in(h_t)[p*E:(p+1)*E], with
              prev_0 = 2049 and prev_p = audio token p-1; blocks
              x += c_proj(causal_mha(rms(x, ln_1))); x += mlps[p](rms(x, ln_2));
              ln_f; logits_i = lm_heads[i](x_i)
  audio token repetition penalty 1.2 for codebooks 0..3 over that codebook's tokens of the
              previous up-to-50 steps (none at t=0); then logits 2048 and 2049 are set to
              -inf (DEVIATION from the official code, which does not mask them: the Rust
              runtime masks them so that Mimi never sees an out-of-range code); argmax.

Outputs (OUT_DIR): see tests/golden/lm/README.md.

Usage:
  make_lm_golden.py CHECKPOINT_DIR CODES_NPY OUT_DIR [--steps N]   (LM goldens + sampling/)
  make_lm_golden.py --sampling-only OUT_DIR                        (only OUT_DIR/sampling/)
"""
import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch

N_AUD = 8
AUD_VOCAB = 2050
AUD_PAD = 2048
AUD_EMP = 2049
TEXT_WAIT = 151665
DEP_EPS = 1e-6
TEXT_PENALTY = 1.03
AUDIO_PENALTY = 1.2
PENALTY_WINDOW = 50
AUDIO_PENALTY_CODEBOOKS = 4  # codebooks 0..3
DELAYS = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(out, name, array, dtype):
    a = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    np.save(os.path.join(out, name), a)
    return a


# ----------------------------------------------------------------------------------------
# Sampling math (official `sample_token` semantics)
# ----------------------------------------------------------------------------------------

def repetition_penalty(logits, window_ids, penalty):
    """logits [V] f32; every DISTINCT id of window_ids is penalised once:
    logit / penalty if logit > 0 else logit * penalty (0 stays 0)."""
    if penalty == 1.0 or window_ids is None or len(window_ids) == 0:
        return logits.clone()
    ids = torch.as_tensor(list(window_ids), dtype=torch.long)
    orig = logits.gather(0, ids)  # values BEFORE any penalty, so repeats act once
    pen = torch.where(orig < 0, orig * penalty, orig / penalty)
    return logits.scatter(0, ids, pen)


def final_probs(logits, temp, top_p, top_k, penalty, window_ids):
    """The distribution the official multinomial draws from, over the full vocab.

    penalty -> softmax(logits / temp) -> if top_p > 0: nucleus (sort descending, mask
    where inclusive_cumsum - p > top_p, renormalise); elif top_k > 0: the k largest,
    renormalised (the official code draws from the unnormalised top-k probs with the
    exponential race, which is scale invariant); else the softmax itself.
    Also returns the nucleus slack (min |inclusive_cumsum - p - top_p| over all ids)."""
    x = repetition_penalty(logits, window_ids, penalty)
    probs = torch.softmax(x / temp, dim=-1)
    slack = None
    if top_p > 0.0:
        p_sort, idx = torch.sort(probs, descending=True)
        csum = torch.cumsum(p_sort, dim=-1)
        excl = csum - p_sort
        mask = excl > top_p
        slack = float((excl.double() - top_p).abs().min())
        p_sort = p_sort * (~mask).float()
        p_sort = p_sort / p_sort.sum()
        out = torch.zeros_like(probs).scatter(0, idx, p_sort)
    elif top_k > 0:
        vals, idx = torch.topk(probs, top_k)
        out = torch.zeros_like(probs).scatter(0, idx, vals / vals.sum())
    else:
        out = probs
    return x, out, slack


def make_sampling(out):
    """8 golden cases for the sampling math. Small-vocab cases store the full logits and
    the full probability vector; the two text-vocab cases (152064) store sparse logits
    (see README) and the non-zero probabilities only."""
    sdir = os.path.join(out, "sampling")
    os.makedirs(sdir, exist_ok=True)
    V_TEXT = 152064
    K_KEEP = 2048
    FILL = -30.0
    cases = [
        # name, vocab, seed, temp, top_p, top_k, penalty, window kind
        ("audio_default", 2050, 101, 0.5, 0.9, 1, 1.2, "mixed"),
        ("top_k_only", 2050, 102, 1.0, 0.0, 20, 1.0, None),
        ("plain", 2050, 103, 0.8, 0.0, 0, 1.0, None),
        ("plain_penalty_repeats", 2050, 104, 1.0, 0.0, 0, 1.2, "repeats"),
        ("temp_0_01_top_p", 2050, 105, 0.01, 0.9, 0, 1.2, "mixed"),
        ("top_p_wide_top_k_ignored", 2050, 106, 1.5, 0.8, 5, 1.2, "mixed"),
        ("text_default", V_TEXT, 107, 0.01, 0.9, 1, 1.03, "text"),
        ("text_top_k_penalty", V_TEXT, 108, 0.7, 0.0, 40, 1.1, "text"),
    ]
    meta = []
    for (name, vocab, seed, temp, top_p, top_k, penalty, wkind) in cases:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(vocab, generator=g, dtype=torch.float32) * 3.0
        entry = dict(name=name, vocab=vocab, seed=seed, temp=temp, top_p=top_p, top_k=top_k,
                     repetition_penalty=penalty)
        if vocab == V_TEXT:
            # Keep the K_KEEP largest draws exactly, every other id gets FILL.
            keep = torch.topk(logits, K_KEEP).indices.sort().values
            sparse_vals = logits[keep].clone()
            logits = torch.full((vocab,), FILL, dtype=torch.float32).scatter(0, keep, sparse_vals)
            save(sdir, f"{name}_logit_ids.npy", keep.numpy(), np.int32)
            save(sdir, f"{name}_logit_values.npy", sparse_vals.numpy(), np.float32)
            entry.update(logits_format="sparse", logit_ids=f"{name}_logit_ids.npy",
                         logit_values=f"{name}_logit_values.npy", fill=FILL)
        else:
            save(sdir, f"{name}_logits.npy", logits.numpy(), np.float32)
            entry.update(logits_format="dense", logits=f"{name}_logits.npy")
        # Window of previous ids: repeats, the current best ids (so the penalty changes the
        # ranking), ids with negative logits, and a few arbitrary ids.
        order = torch.argsort(logits, descending=True, stable=True).tolist()
        if wkind is None:
            window = []
        elif wkind == "repeats":
            window = [order[0], order[0], order[0], order[1], order[-1], order[-1], 7, 7, 1000]
        elif wkind == "mixed":
            window = ([order[0]] * 5 + [order[1], order[2], order[2]] + [order[-1], order[-2]] * 3
                      + [3, 3, 2047, 2048, 2049] + [order[i] for i in range(10, 42)])
            window = window[:50]
        elif wkind == "text":
            window = ([TEXT_WAIT] * 20 + [order[0], order[0], order[1], order[3], order[3]]
                      + [order[i] for i in range(5, 25)] + [order[-1], 0, 3, 151643, 42])
            window = window[:50]
        entry["window_ids"] = [int(i) for i in window]
        with torch.no_grad():
            pen, probs, slack = final_probs(logits, temp, top_p, top_k, penalty, window)
        nz = torch.nonzero(probs > 0).flatten()
        if vocab == V_TEXT:
            save(sdir, f"{name}_prob_ids.npy", nz.numpy(), np.int32)
            save(sdir, f"{name}_prob_values.npy", probs[nz].numpy(), np.float32)
            entry.update(probs_format="sparse", prob_ids=f"{name}_prob_ids.npy",
                         prob_values=f"{name}_prob_values.npy")
        else:
            save(sdir, f"{name}_probs.npy", probs.numpy(), np.float32)
            entry.update(probs_format="dense", probs=f"{name}_probs.npy")
        top2 = torch.topk(pen, 2).values
        entry.update(
            support=int(nz.numel()),
            argmax_after_penalty=int(torch.argmax(pen)),
            penalised_top2_gap=float(top2[0] - top2[1]),
            max_prob=float(probs.max()),
            top_p_slack=slack,
        )
        meta.append(entry)
    doc = {
        "description": (
            "Golden cases for FLM-Audio sampling (official flmaudio third_party moshi "
            "sample_token semantics). logits = torch.randn(vocab, generator=manual_seed(seed)) * 3 "
            "(float32). Text-vocab cases are sparse: the 2048 largest draws kept exactly at "
            "logit_ids/logit_values, every other id = fill. probs = the distribution the "
            "multinomial draws from: repetition penalty over the DISTINCT window ids "
            "(l/p if l>0 else l*p, from the unpenalised value), softmax(logits / float32(temp)), "
            "then if top_p>0: sort descending, drop ids whose (inclusive cumsum - p) > top_p "
            "(torch's CPU cumsum accumulates in float64 and rounds each output to float32; "
            "the subtraction is float32), "
            "renormalise (top_k ignored); elif top_k>0: the k largest, renormalised; else plain. "
            "Zero for excluded ids. Sparse probs list only the non-zero ids. top_p_slack = "
            "min |inclusive_cumsum - p - top_p| over all ids (how close the nucleus cut is)."
        ),
        "cases": meta,
    }
    with open(os.path.join(sdir, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return meta


# ----------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------

def load_weights(ckpt_dir):
    from safetensors.torch import load_file
    raw = load_file(os.path.join(ckpt_dir, "model.safetensors"))
    return {k: v.to(torch.float32) for k, v in raw.items()}  # bf16 -> f32 is exact


def build_backbone(cfg, w):
    from transformers import Qwen2Config, Qwen2Model
    qcfg = Qwen2Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        hidden_act="silu",
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"],
        rope_scaling=None,  # plain 1-D RoPE (mrope maps to "default")
        use_sliding_window=False,
        sliding_window=None,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
        attn_implementation="eager",
    )
    qcfg._attn_implementation = "eager"
    model = Qwen2Model(qcfg).to(torch.float32).eval()
    sd = {"embed_tokens.weight": w["model.embed_tokens.text_embeddings.weight"],
          "norm.weight": w["model.norm.weight"]}
    for k, v in w.items():
        if k.startswith("model.layers.") and not k.endswith("rotary_emb.inv_freq"):
            sd[k[len("model."):]] = v
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    return model


class Depformer:
    """DepthGPT, full recompute over positions 0..i (causal, so equal to the cached form)."""

    def __init__(self, cfg, w):
        d = cfg["aud_depthgpt"]
        self.E, self.n_head, self.n_layer = d["n_embd"], d["n_head"], d["n_layer"]
        assert not d.get("bias", False) and d.get("use_cmlp") and d.get("use_rmsnorm") \
            and d.get("use_swiglu")
        self.inter = int(8 * self.E / 3)
        p = "aud_output_layers."
        self.linear_in = w[p + "linear_in.weight"]
        self.wtes = [w[p + f"transformer.wtes.{c}.weight"] for c in range(N_AUD)]
        self.wpe = w[p + "transformer.wpe.weight"]
        self.blocks = []
        for b in range(self.n_layer):
            q = p + f"transformer.h.{b}."
            self.blocks.append(dict(
                ln_1=w[q + "ln_1.weight"], ln_2=w[q + "ln_2.weight"],
                c_attn=w[q + "attn.c_attn.weight"], c_proj=w[q + "attn.c_proj.weight"],
                mlps=[(w[q + f"mlps.{c}.gate_proj.weight"], w[q + f"mlps.{c}.up_proj.weight"],
                       w[q + f"mlps.{c}.down_proj.weight"]) for c in range(N_AUD)],
            ))
            assert self.blocks[-1]["mlps"][0][0].shape == (self.inter, self.E)
        self.ln_f = w[p + "transformer.ln_f.weight"]
        self.heads = [w[p + f"lm_heads.{c}.weight"] for c in range(N_AUD)]

    @staticmethod
    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + DEP_EPS) * weight

    def attn(self, x, blk):
        T, E = x.shape
        hd = E // self.n_head
        qkv = x @ blk["c_attn"].T
        q, k, v = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
        q = q.view(T, self.n_head, hd).transpose(0, 1)
        k = k.view(T, self.n_head, hd).transpose(0, 1)
        v = v.view(T, self.n_head, hd).transpose(0, 1)
        s = (q @ k.transpose(1, 2)) * (1.0 / math.sqrt(hd))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        s = s.masked_fill(~causal, float("-inf"))
        y = torch.softmax(s, dim=-1) @ v  # [nh, T, hd]
        y = y.transpose(0, 1).reshape(T, E)
        return y @ blk["c_proj"].T

    def logits(self, h, prev):
        """h [H] post-norm backbone state; prev: ids for positions 0..i (prev[0] = 2049).
        Returns the 2050 logits of position i = len(prev) - 1."""
        T = len(prev)
        lin = (h @ self.linear_in.T).view(N_AUD, self.E)
        x = torch.stack([self.wtes[p][prev[p]] + self.wpe[p] + lin[p] for p in range(T)])
        for blk in self.blocks:
            x = x + self.attn(self.rms(x, blk["ln_1"]), blk)
            xl = self.rms(x, blk["ln_2"])
            mlp = []
            for p in range(T):
                gate, up, down = blk["mlps"][p]
                a = xl[p]
                mlp.append((torch.nn.functional.silu(a @ gate.T) * (a @ up.T)) @ down.T)
            x = x + torch.stack(mlp)
        x = self.rms(x, self.ln_f)
        return x[T - 1] @ self.heads[T - 1].T


def top2_gap(x):
    v = torch.topk(x, 2).values
    return float(v[0] - v[1])


def run_lm(ckpt_dir, codes, steps):
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["aud_channel"] == N_AUD and cfg["aud_vocab_size"] == AUD_VOCAB
    mm = cfg["mm_token_info"]
    assert (mm["aud_pad_token_id"], mm["aud_emp_token_id"], mm["text_wait_token_id"]) == \
        (AUD_PAD, AUD_EMP, TEXT_WAIT)
    w = load_weights(ckpt_dir)
    backbone = build_backbone(cfg, w)
    dep = Depformer(cfg, w)
    text_emb = w["model.embed_tokens.text_embeddings.weight"]
    speak_emb = [w[f"model.embed_tokens.aud_speak_embeddings.{c}.weight"] for c in range(N_AUD)]
    listen_emb = [w[f"model.embed_tokens.aud_listen_embeddings.{c}.weight"] for c in range(N_AUD)]
    lm_head = w["lm_head.weight"]
    use_mup = bool(cfg.get("use_mup", False))
    input_mult = float(cfg.get("input_mult", 1.0)) if use_mup else 1.0
    output_mult = (float(cfg["output_mult"]) / float(cfg["mup_scale_factor"])) if use_mup else 1.0

    from transformers import DynamicCache
    cache = DynamicCache()
    tokens = np.zeros((steps, 1 + N_AUD), np.int32)
    inputs = np.zeros((steps, 17), np.int32)
    margins = np.zeros((steps, 1 + N_AUD), np.float32)
    text_top = np.zeros((steps, 8), np.float32)
    text_top_ids = np.zeros((steps, 8), np.int32)
    hidden_head = np.zeros((steps, 16), np.float32)
    audio_logits_step0 = np.zeros((N_AUD, AUD_VOCAB), np.float32)
    text_hist, audio_hist = [], []
    special_wins = []  # (step, codebook, id) where 2048/2049 would win without the mask
    penalty_changed = []  # (step, stream) where the repetition penalty changed the argmax
    for t in range(steps):
        text_in = tokens[t - 1, 0] if t > 0 else TEXT_WAIT
        speak_in = tokens[t - 1, 1:] if t > 0 else [AUD_PAD] * N_AUD
        listen_in = [int(codes[0, t])] + [int(codes[q, t - 1]) if t > 0 else AUD_PAD
                                          for q in range(1, N_AUD)]
        ids = [int(text_in)] + [int(s) for s in speak_in] + listen_in
        inputs[t] = ids
        emb = text_emb[ids[0]].clone()
        for c in range(N_AUD):
            emb += speak_emb[c][ids[1 + c]] + listen_emb[c][ids[9 + c]]
        emb = emb * input_mult
        out = backbone(inputs_embeds=emb.view(1, 1, -1), past_key_values=cache, use_cache=True,
                       position_ids=torch.tensor([[t]]), cache_position=torch.tensor([t]))
        cache = out.past_key_values
        h = out.last_hidden_state[0, -1]
        logits = (h @ lm_head.T) * output_mult
        hidden_head[t] = h[:16].numpy()
        tv, ti = torch.topk(logits, 8)
        text_top[t], text_top_ids[t] = tv.numpy(), ti.numpy()
        window = text_hist[-PENALTY_WINDOW:]
        pen = repetition_penalty(logits, window, TEXT_PENALTY if window else 1.0)
        tokens[t, 0] = int(torch.argmax(pen))
        if tokens[t, 0] != int(ti[0]):
            penalty_changed.append((t, 0))
        margins[t, 0] = top2_gap(pen)
        text_hist.append(int(tokens[t, 0]))

        prev = [AUD_EMP]
        for i in range(N_AUD):
            al = dep.logits(h, prev)
            if t == 0:
                audio_logits_step0[i] = al.numpy()
            awin = [a[i] for a in audio_hist[-PENALTY_WINDOW:]]
            use_pen = i < AUDIO_PENALTY_CODEBOOKS and len(awin) > 0
            raw_best = int(torch.argmax(al[:AUD_PAD]))
            al = repetition_penalty(al, awin, AUDIO_PENALTY if use_pen else 1.0)
            if int(torch.argmax(al)) in (AUD_PAD, AUD_EMP):
                special_wins.append((t, i, int(torch.argmax(al))))
            al[AUD_PAD] = float("-inf")
            al[AUD_EMP] = float("-inf")
            tok = int(torch.argmax(al))
            if tok != raw_best:
                penalty_changed.append((t, 1 + i))
            tokens[t, 1 + i] = tok
            margins[t, 1 + i] = top2_gap(al)
            prev.append(tok)
        audio_hist.append([int(a) for a in tokens[t, 1:]])
    return cfg, dict(tokens=tokens, inputs=inputs, margins=margins, text_top=text_top,
                     text_top_ids=text_top_ids, hidden_head=hidden_head,
                     audio_logits_step0=audio_logits_step0, special_wins=special_wins,
                     penalty_changed=penalty_changed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="CHECKPOINT_DIR CODES_NPY OUT_DIR (or OUT_DIR "
                    "with --sampling-only)")
    ap.add_argument("--steps", type=int, default=None, help="steps to run (default: all frames)")
    ap.add_argument("--sampling-only", action="store_true", help="only write OUT_DIR/sampling/")
    ap.add_argument("--seed", type=int, default=3, help="flm-testkit seed, recorded in meta.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.sampling_only:
        if len(args.paths) != 1:
            ap.error("--sampling-only takes OUT_DIR only")
        os.makedirs(args.paths[0], exist_ok=True)
        make_sampling(args.paths[0])
        return
    if len(args.paths) != 3:
        ap.error("expected CHECKPOINT_DIR CODES_NPY OUT_DIR")
    ckpt, codes_path, out = args.paths
    os.makedirs(out, exist_ok=True)
    codes = np.load(codes_path)
    assert codes.ndim == 2 and codes.shape[0] == N_AUD
    assert ((codes >= 0) & (codes < 2048)).all()
    steps = codes.shape[1] if args.steps is None else args.steps
    assert 0 < steps <= codes.shape[1]

    with torch.no_grad():
        cfg, r = run_lm(ckpt, codes, steps)
    tokens = save(out, "tokens.npy", r["tokens"], np.int32)
    save(out, "inputs.npy", r["inputs"], np.int32)
    margins = save(out, "margins.npy", r["margins"], np.float32)
    save(out, "text_logits_top.npy", r["text_top"], np.float32)
    save(out, "text_logits_top_ids.npy", r["text_top_ids"], np.int32)
    save(out, "hidden_head.npy", r["hidden_head"], np.float32)
    save(out, "audio_logits_step0.npy", r["audio_logits_step0"], np.float32)
    sampling = make_sampling(out)

    import transformers
    distinct_text = len(set(tokens[:, 0].tolist()))
    distinct_audio = [len(set(tokens[:, 1 + c].tolist())) for c in range(N_AUD)]
    pen_changed = [sum(1 for (_, k) in r["penalty_changed"] if k == s) for s in range(1 + N_AUD)]
    min_margin = float(margins.min())
    argmin = np.unravel_index(int(np.argmin(margins)), margins.shape)
    meta = {
        "reference": ("tests/golden/make_lm_golden.py: independent PyTorch float32 CPU reference "
                      "of FLM-Audio LMGen.step, greedy (use_sampling=False), batch 1; backbone = "
                      "transformers.Qwen2Model (eager attention, DynamicCache, position id = "
                      "step), depformer and sampling written from "
                      "the official model math"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "checkpoint": f"flm-testkit lm --size tiny --seed {args.seed}",
        "checkpoint_seed": args.seed,
        "model_safetensors_sha256": sha256(os.path.join(ckpt, "model.safetensors")),
        "config_json_sha256": sha256(os.path.join(ckpt, "config.json")),
        "codes": "tests/golden/mimi/codes.npy",
        "codes_sha256": sha256(codes_path),
        "steps": steps,
        "initial_column": {"text": TEXT_WAIT, "speak": AUD_PAD, "listen_0": "user code[0][0]",
                           "listen_1_7": AUD_PAD},
        "text_sampling": "repetition penalty 1.03 over the previous up-to-50 text tokens "
                         "(none at step 0), argmax",
        "audio_sampling": "repetition penalty 1.2 for codebooks 0..3 over the previous "
                          "up-to-50 steps of that codebook (none at step 0), logits 2048 and "
                          "2049 set to -inf, argmax",
        "deviation_from_official": [
            "Audio logits 2048 (pad) and 2049 (emp) are masked to -inf before the argmax; the "
            "official LMGen does not mask them (it can emit them, and Mimi would then index "
            "out of range). Margins are computed after the mask.",
            "Step 0 uses the intended initial column (wait / pad), not the all-zero column "
            "the official reset() leaves since commit eebcb4a.",
        ],
        "unmasked_special_wins": [list(x) for x in r["special_wins"]],
        "penalty_changed_argmax_per_stream": pen_changed,
        "distinct_text_tokens": distinct_text,
        "distinct_audio_codes_per_codebook": distinct_audio,
        "min_margin": min_margin,
        "min_margin_at": {"step": int(argmin[0]), "stream": int(argmin[1])},
        "tokens_sha256": sha256(os.path.join(out, "tokens.npy")),
        "remake": [
            "cargo run --release -p flm-testkit -- lm --size tiny --seed 3 --out /tmp/lmref/lm",
            "python3 tests/golden/make_lm_golden.py /tmp/lmref/lm tests/golden/mimi/codes.npy "
            "tests/golden/lm",
        ],
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")

    print(f"steps {steps}")
    print(f"distinct text tokens: {distinct_text} {sorted(set(tokens[:, 0].tolist()))[:12]}")
    print(f"distinct audio codes per codebook: {distinct_audio}")
    print(f"min margin {min_margin:.6g} at step {argmin[0]} stream {argmin[1]}; "
          f"per stream {[round(float(m), 5) for m in margins.min(axis=0)]}")
    print(f"steps where the repetition penalty changed the argmax, per stream: {pen_changed}")
    print(f"unmasked 2048/2049 wins (step, codebook, id): {r['special_wins']}")
    for s in sampling:
        print(f"sampling {s['name']}: support {s['support']} max_prob {s['max_prob']:.4g} "
              f"top_p_slack {s['top_p_slack']}")


if __name__ == "__main__":
    main()
