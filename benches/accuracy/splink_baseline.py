"""Splink's recommended deduplication of a FEBRL set (its published FEBRL3 example: name and
date-of-birth comparisons, exact street number and postcode with term-frequency adjustments,
prior from deterministic rules, u by random sampling, m by EM on two blocking rules), run over
the fields cdp's CRM records carry. The example's `soc_sec_id` comparison is left out: a CRM
contact has no national id, so neither matcher sees one."""

import time

import duckdb
import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on


def run(records, threshold: float, identifiers=()):
    """Clusters the records; returns ({rec_id: cluster_id}, seconds). The clock covers
    everything from loading the records to the clusters, as a batch job would run.
    `identifiers` are columns (emails, phones) compared exactly and blocked on as well."""
    frame = pd.DataFrame(records).drop(columns=["person"])
    started = time.perf_counter()
    con = duckdb.connect()
    db_api = DuckDBAPI(connection=con)
    df = db_api.register(frame)
    blocking = [
        block_on("first_name"),
        block_on("last_name"),
        block_on("birth_date"),
        block_on("postal_code"),
    ] + [block_on(c) for c in identifiers]
    settings = SettingsCreator(
        unique_id_column_name="rec_id",
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=blocking,
        comparisons=[
            cl.NameComparison("first_name"),
            cl.NameComparison("last_name"),
            cl.DateOfBirthComparison("birth_date", input_is_string=True, datetime_format="%Y-%m-%d"),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.ExactMatch("postal_code").configure(term_frequency_adjustments=True),
        ] + [cl.ExactMatch(c) for c in identifiers],
    )
    linker = Linker(df, settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [
            block_on("first_name", "last_name", "birth_date"),
            "l.first_name = r.last_name and l.last_name = r.first_name and l.birth_date = r.birth_date",
        ],
        recall=0.9,
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("birth_date"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("postal_code"))
    pairs = linker.inference.predict(threshold_match_probability=0.2)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        pairs, threshold_match_probability=threshold
    )
    out = clusters.as_pandas_dataframe()
    elapsed = time.perf_counter() - started
    return dict(zip(out["rec_id"], out["cluster_id"])), elapsed
