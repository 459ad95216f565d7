"""cdp's own generated workload as a matching data set: the CRM records of `cdp generate`
(Salesforce Contacts and Leads, HubSpot contacts, several versions of a record, and list-import
duplicates typed by someone else: nicknames, typos, swapped names, moved house, an old or no
email), with the generator's ground truth.

Both matchers see the same records and everything in them: cdp links on emails and phones as
identifiers and matches on names, birth date and address; Splink gets the emails and phones as
comparison columns beside the others.
"""

import json
import shutil
import subprocess


def _salesforce(j):
    return {
        "first_name": j.get("FirstName"),
        "last_name": j.get("LastName"),
        "birth_date": j.get("Birthdate"),
        "street": j.get("MailingStreet") or j.get("Street"),
        "city": j.get("MailingCity") or j.get("City"),
        "postal_code": j.get("MailingPostalCode") or j.get("PostalCode"),
        "email": j.get("Email"),
        "phone": j.get("Phone") or j.get("MobilePhone"),
    }


def _hubspot(j):
    p = j.get("properties", {})
    return {
        "first_name": p.get("firstname"),
        "last_name": p.get("lastname"),
        "birth_date": p.get("date_of_birth"),
        "street": p.get("address"),
        "city": p.get("city"),
        "postal_code": p.get("zip"),
        "email": p.get("email"),
        "phone": p.get("phone"),
    }


def _clean(row):
    """Empty strings as missing; emails trimmed and lower-cased and phones as digits, as ingest
    normalises them before hashing (so Splink compares what cdp compares)."""
    out = {k: (v.strip() or None) if isinstance(v, str) else v for k, v in row.items()}
    if out["email"]:
        out["email"] = out["email"].lower()
    if out["phone"]:
        digits = "".join(c for c in out["phone"] if c.isdigit())
        out["phone"] = digits[-10:] or None
    if out["street"]:
        out["street_number"] = out["street"].split(" ")[0]
    else:
        out["street_number"] = None
    return out


def generate(cdp: str, out_dir, profiles: int, seed: int):
    """Writes the workload's CRM records (`crm.jsonl`) and their truth rows (`truth.csv`) into
    `out_dir`; returns one row per record with `rec_id` (the record's event id) and `person`."""
    raw = out_dir.parent / f"{out_dir.name}-raw"
    shutil.rmtree(raw, ignore_errors=True)
    subprocess.run(
        [cdp, "generate", "--out", str(raw), "--profiles", str(profiles), "--seed", str(seed),
         "--now", "2026-01-01T00:00:00Z"],
        check=True, capture_output=True,
    )
    truth = [l.split(",", 2) for l in (raw / "truth.csv").read_text().splitlines()[1:]]
    crm_truth = iter([(r, p) for s, r, p in truth if s == "crm"])
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    # The generator writes a line's truth rows right after the line, in line order, and none for
    # the few lines it cuts short (invalid JSON), so the CRM rows follow the CRM lines.
    with open(raw / "crm.jsonl") as lines, open(out_dir / "crm.jsonl", "w") as crm, \
            open(out_dir / "truth.csv", "w") as out_truth:
        out_truth.write("source,record,person\n")
        for line in lines:
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue
            rec_id, person = next(crm_truth)
            crm.write(line)
            out_truth.write(f"crm,{rec_id},{person}\n")
            row = _salesforce(j) if "attributes" in j else _hubspot(j)
            records.append({"rec_id": rec_id, "person": person} | _clean(row))
    shutil.rmtree(raw)
    return records
