//! `cdp snapshot`: the resolver's and activation's state as Parquet tables for analysts, under
//! `OUT/dt=YYYY-MM-DD/` (`profiles`, `identifiers`, `merges`, `refused_merges`,
//! `cohort_membership`), read by DuckDB, Spark and pandas as they are.
//!
//! Both stores are opened read-only, which freezes each at its last committed batch while the
//! pipeline keeps writing; profiles are streamed in chunks, so memory stays flat however many
//! there are. Each table is written to a hidden temporary file, synced, then renamed: a reader
//! globbing `*.parquet` never sees half a file.
//!
//! Column choices: the attributes every profile has (lifecycle stage, segment, engagement
//! times, touchpoints, channels) are typed columns, so analysts group and filter on them
//! without parsing; tenant traits, event counters and consent are open-ended maps whose keys
//! differ per tenant, so they are JSON strings (`json_extract` in DuckDB, `from_json` in Spark).
//! Identifier values are as the resolver stores them: hashed where they are PII.

use anyhow::{Context, Result};
use arrow_array::builder::{
    ArrayBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use cdp_proto::Timestamp;
use cdp_resolver::export::ExportView;
use cdp_resolver::link::LinkDecision;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per Arrow batch: large enough for good Parquet pages, small enough to bound memory.
const CHUNK_ROWS: usize = 8192;

/// The tables of a snapshot, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Profiles,
    Identifiers,
    Merges,
    RefusedMerges,
    CohortMembership,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Profiles => "profiles",
            Table::Identifiers => "identifiers",
            Table::Merges => "merges",
            Table::RefusedMerges => "refused_merges",
            Table::CohortMembership => "cohort_membership",
        }
    }

    /// The table's columns; the README's "Snapshots for analysts" section documents them.
    pub fn schema(self) -> Schema {
        use DataType::{Float64, Int64, Utf8};
        let time = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let col = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
        let fields = match self {
            Table::Profiles => vec![
                col("tenant", Utf8, false),
                col("canonical_id", Utf8, false),
                col("lifecycle_stage", Utf8, true),
                col("segment", Utf8, true),
                col("first_seen", time(), true),
                col("last_engagement", time(), true),
                col("total_touchpoints", Int64, false),
                col(
                    "channels_active",
                    DataType::List(Arc::new(Field::new("item", Utf8, true))),
                    false,
                ),
                col("traits", Utf8, false),
                col("counts", Utf8, false),
                col("consent", Utf8, false),
                col("identifier_count", Int64, false),
                col("merge_count", Int64, false),
                col("version", Int64, false),
                col("created_at", time(), false),
                col("updated_at", time(), false),
            ],
            Table::Identifiers => vec![
                col("tenant", Utf8, false),
                col("canonical_id", Utf8, false),
                col("kind", Utf8, false),
                col("value", Utf8, false),
            ],
            Table::Merges => vec![
                col("tenant", Utf8, false),
                col("canonical_id", Utf8, false),
                col("merged_at", time(), false),
                col("rule", Utf8, false),
                col("confidence", Float64, false),
                col("from_id", Utf8, false),
                col("into_id", Utf8, false),
            ],
            Table::RefusedMerges => vec![
                col("tenant", Utf8, false),
                col("link_id", Int64, false),
                col("observed_at", time(), false),
                col("rule", Utf8, false),
                col("confidence", Float64, false),
                col("reason", Utf8, false),
                col("a_kind", Utf8, false),
                col("a_value", Utf8, false),
                col("a_canonical_id", Utf8, true),
                col("b_kind", Utf8, false),
                col("b_value", Utf8, false),
                col("b_canonical_id", Utf8, true),
                col("signal_id", Utf8, false),
            ],
            Table::CohortMembership => vec![
                col("tenant", Utf8, false),
                col("audience_key", Utf8, false),
                col("canonical_id", Utf8, false),
                col("entered_at", time(), false),
                col("version", Int64, false),
            ],
        };
        Schema::new(fields)
    }
}

/// What to snapshot and where.
pub struct SnapshotOptions {
    /// The resolver's state directory (`DATA/resolver`).
    pub resolver_dir: PathBuf,
    /// Activation's state directory (`DATA/activation`); when it does not exist,
    /// `cohort_membership` is written empty and [`Summary::activation_missing`] says so.
    pub activation_dir: PathBuf,
    /// Tables go to `out/dt=<UTC date of at>/`.
    pub out: PathBuf,
    /// When the snapshot is taken: names the partition and is stored in each file's metadata.
    pub at: Timestamp,
}

/// One table written.
#[derive(Debug, Clone)]
pub struct TableSummary {
    pub table: Table,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub dir: PathBuf,
    pub tables: Vec<TableSummary>,
    pub activation_missing: bool,
}

impl Summary {
    pub fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }
}

/// Writes every table of a snapshot.
pub fn write(options: &SnapshotOptions) -> Result<Summary> {
    let dir = options
        .out
        .join(format!("dt={}", options.at.format("%Y-%m-%d")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let view = ExportView::open(&options.resolver_dir).with_context(|| {
        format!(
            "opening resolver state in {}",
            options.resolver_dir.display()
        )
    })?;
    let at = options.at.to_rfc3339();
    let open = |table| TableFile::create(&dir, table, &at);

    let mut profiles = open(Table::Profiles)?;
    let mut identifiers = open(Table::Identifiers)?;
    let mut merges = open(Table::Merges)?;
    for profile in view.profiles() {
        let p = profile?;
        let a = &p.attributes;
        let channels: Vec<&str> = a.channels_active.iter().map(|s| s.as_str()).collect();
        profiles.push(&[
            Value::Str(&p.tenant),
            Value::Str(&p.canonical_id),
            Value::OptStr(a.lifecycle_stage.as_deref()),
            Value::OptStr(a.segment.as_deref()),
            Value::OptTime(a.first_seen),
            Value::OptTime(a.last_engagement),
            Value::Int(a.total_touchpoints as i64),
            Value::StrList(&channels),
            Value::String(serde_json::to_string(&a.traits)?),
            Value::String(serde_json::to_string(&a.counts)?),
            Value::String(serde_json::to_string(&p.consent)?),
            Value::Int(p.identifiers.len() as i64),
            Value::Int(p.merge_history.len() as i64),
            Value::Int(p.version as i64),
            Value::Time(p.created_at),
            Value::Time(p.updated_at),
        ])?;
        for id in &p.identifiers {
            identifiers.push(&[
                Value::Str(&p.tenant),
                Value::Str(&p.canonical_id),
                Value::Str(id.kind.as_str()),
                Value::Str(&id.value),
            ])?;
        }
        for m in &p.merge_history {
            merges.push(&[
                Value::Str(&p.tenant),
                Value::Str(&p.canonical_id),
                Value::Time(m.merged_at),
                Value::Str(&m.rule),
                Value::Float(m.confidence),
                Value::Str(&m.from),
                Value::Str(&m.into),
            ])?;
        }
    }
    let mut tables = vec![profiles.finish()?, identifiers.finish()?, merges.finish()?];

    let mut refused = open(Table::RefusedMerges)?;
    for link in view.links() {
        let link = link?;
        let LinkDecision::Refused(reason) = &link.decision else {
            continue;
        };
        // Where each end lives now, in the same frozen view.
        let a_profile = cdp_resolver::lookup::canonical_of(&view, &link.tenant, &link.a)?;
        let b_profile = cdp_resolver::lookup::canonical_of(&view, &link.tenant, &link.b)?;
        refused.push(&[
            Value::Str(&link.tenant),
            Value::Int(link.id as i64),
            Value::Time(link.observed_at),
            Value::Str(&link.rule),
            Value::Float(link.confidence),
            Value::Str(reason),
            Value::Str(link.a.kind.as_str()),
            Value::Str(&link.a.value),
            Value::OptStr(a_profile.as_deref()),
            Value::Str(link.b.kind.as_str()),
            Value::Str(&link.b.value),
            Value::OptStr(b_profile.as_deref()),
            Value::Str(&link.signal_id),
        ])?;
    }
    tables.push(refused.finish()?);

    let mut membership = open(Table::CohortMembership)?;
    let activation_missing = !options.activation_dir.exists();
    if !activation_missing {
        let store =
            cdp_activation::membership::MembershipStore::open_read_only(&options.activation_dir)
                .with_context(|| {
                    format!(
                        "opening activation state in {}",
                        options.activation_dir.display()
                    )
                })?;
        for (tenant, canonical_id, audience, state) in store.members()? {
            membership.push(&[
                Value::Str(&tenant),
                Value::Str(&audience),
                Value::Str(&canonical_id),
                Value::Time(state.since),
                Value::Int(state.seq as i64),
            ])?;
        }
    }
    tables.push(membership.finish()?);
    Ok(Summary {
        dir,
        tables,
        activation_missing,
    })
}

/// One cell of a row, in the order of the table's schema.
enum Value<'a> {
    Str(&'a str),
    String(String),
    OptStr(Option<&'a str>),
    Int(i64),
    Float(f64),
    Time(Timestamp),
    OptTime(Option<Timestamp>),
    StrList(&'a [&'a str]),
}

/// A column being filled, one builder per Arrow type the tables use.
enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Time(TimestampMillisecondBuilder),
    Utf8List(ListBuilder<StringBuilder>),
}

impl Column {
    fn for_field(field: &Field) -> Self {
        match field.data_type() {
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Float64 => Column::Float64(Float64Builder::new()),
            DataType::Timestamp(_, tz) => {
                Column::Time(TimestampMillisecondBuilder::new().with_timezone_opt(tz.clone()))
            }
            DataType::List(item) => {
                Column::Utf8List(ListBuilder::new(StringBuilder::new()).with_field(item.clone()))
            }
            _ => Column::Utf8(StringBuilder::new()),
        }
    }

    fn append(&mut self, value: &Value) -> Result<()> {
        match (self, value) {
            (Column::Utf8(b), Value::Str(s)) => b.append_value(s),
            (Column::Utf8(b), Value::String(s)) => b.append_value(s),
            (Column::Utf8(b), Value::OptStr(s)) => b.append_option(*s),
            (Column::Int64(b), Value::Int(n)) => b.append_value(*n),
            (Column::Float64(b), Value::Float(x)) => b.append_value(*x),
            (Column::Time(b), Value::Time(t)) => b.append_value(t.timestamp_millis()),
            (Column::Time(b), Value::OptTime(t)) => {
                b.append_option(t.map(|t| t.timestamp_millis()))
            }
            (Column::Utf8List(b), Value::StrList(items)) => {
                for item in *items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            _ => anyhow::bail!("a snapshot row does not match its table's schema"),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Utf8(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::Utf8List(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Utf8(b) => b.len(),
            Column::Int64(b) => b.len(),
            Column::Float64(b) => b.len(),
            Column::Time(b) => b.len(),
            Column::Utf8List(b) => b.len(),
        }
    }
}

/// A table being written: rows are buffered into columns and flushed as Arrow batches to a
/// hidden temporary file, which [`TableFile::finish`] renames into place.
struct TableFile {
    table: Table,
    schema: SchemaRef,
    columns: Vec<Column>,
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
}

impl TableFile {
    fn create(dir: &Path, table: Table, snapshot_at: &str) -> Result<Self> {
        let schema = Arc::new(table.schema());
        let path = dir.join(format!("{}.parquet", table.name()));
        let tmp = dir.join(format!(".{}.parquet.tmp", table.name()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "cdp.snapshot_at".to_string(),
                snapshot_at.to_string(),
            )]))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::for_field(f))
            .collect();
        Ok(Self {
            table,
            schema,
            columns,
            writer,
            tmp,
            path,
            rows: 0,
        })
    }

    fn push(&mut self, row: &[Value]) -> Result<()> {
        anyhow::ensure!(
            row.len() == self.columns.len(),
            "a {} row has {} cells for {} columns",
            self.table.name(),
            row.len(),
            self.columns.len()
        );
        for (column, value) in self.columns.iter_mut().zip(row) {
            column.append(value).with_context(|| self.table.name())?;
        }
        self.rows += 1;
        if self.columns[0].len() >= CHUNK_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.columns[0].len() == 0 {
            return Ok(());
        }
        let arrays = self.columns.iter_mut().map(Column::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        Ok(())
    }

    fn finish(mut self) -> Result<TableSummary> {
        self.flush()?;
        self.writer.finish()?;
        self.writer.inner_mut().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))?;
        let bytes = std::fs::metadata(&self.path)?.len();
        Ok(TableSummary {
            table: self.table,
            path: self.path,
            rows: self.rows,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// The columns the README documents, table by table (`name type`, `?` when nullable).
    const DOCUMENTED: [(&str, &str); 5] = [
        (
            "profiles",
            "tenant string, canonical_id string, lifecycle_stage string?, segment string?, \
             first_seen timestamp?, last_engagement timestamp?, total_touchpoints int64, \
             channels_active list<string>, traits json, counts json, consent json, \
             identifier_count int64, merge_count int64, version int64, created_at timestamp, \
             updated_at timestamp",
        ),
        (
            "identifiers",
            "tenant string, canonical_id string, kind string, value string",
        ),
        (
            "merges",
            "tenant string, canonical_id string, merged_at timestamp, rule string, \
             confidence double, from_id string, into_id string",
        ),
        (
            "refused_merges",
            "tenant string, link_id int64, observed_at timestamp, rule string, \
             confidence double, reason string, a_kind string, a_value string, \
             a_canonical_id string?, b_kind string, b_value string, b_canonical_id string?, \
             signal_id string",
        ),
        (
            "cohort_membership",
            "tenant string, audience_key string, canonical_id string, entered_at timestamp, \
             version int64",
        ),
    ];

    fn describe(schema: &Schema, json_columns: &[&str]) -> String {
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8 if json_columns.contains(&f.name().as_str()) => "json",
                    DataType::Utf8 => "string",
                    DataType::Int64 => "int64",
                    DataType::Float64 => "double",
                    DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if &**tz == "UTC" => {
                        "timestamp"
                    }
                    DataType::List(item) if item.data_type() == &DataType::Utf8 => "list<string>",
                    other => panic!("undocumented type {other}"),
                };
                let null = if f.is_nullable() { "?" } else { "" };
                format!("{} {t}{null}", f.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn written_files_have_the_documented_schema() {
        let dir = tempfile::tempdir().unwrap();
        let resolver_dir = dir.path().join("resolver");
        drop(cdp_resolver::RocksStore::open(&resolver_dir).unwrap());
        let at = chrono::DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .to_utc();
        let summary = write(&SnapshotOptions {
            resolver_dir,
            activation_dir: dir.path().join("activation"),
            out: dir.path().join("out"),
            at,
        })
        .unwrap();
        assert!(summary.activation_missing);
        assert_eq!(summary.dir, dir.path().join("out/dt=2026-03-04"));
        assert_eq!(summary.tables.len(), DOCUMENTED.len());
        for (written, (name, columns)) in summary.tables.iter().zip(DOCUMENTED) {
            assert_eq!(written.table.name(), name);
            assert_eq!(written.rows, 0);
            let file = File::open(&written.path).unwrap();
            let reader = SerializedFileReader::new(file).unwrap();
            let meta = reader.metadata().file_metadata();
            let schema = parquet::arrow::parquet_to_arrow_schema(
                meta.schema_descr(),
                meta.key_value_metadata(),
            )
            .unwrap();
            assert_eq!(
                describe(&schema, &["traits", "counts", "consent"]),
                columns,
                "{name}"
            );
            let stamped = meta
                .key_value_metadata()
                .unwrap()
                .iter()
                .find(|kv| kv.key == "cdp.snapshot_at")
                .and_then(|kv| kv.value.clone());
            assert_eq!(stamped.as_deref(), Some("2026-03-04T05:06:07+00:00"));
        }
        // Only finished tables are left: no temporary files.
        let names: Vec<String> = std::fs::read_dir(&summary.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names
            .iter()
            .all(|n| n.ends_with(".parquet") && !n.starts_with('.')));
    }

    #[test]
    fn a_row_of_the_wrong_shape_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TableFile::create(dir.path(), Table::Identifiers, "now").unwrap();
        assert!(t.push(&[Value::Str("only one cell")]).is_err());
        assert!(t
            .push(&[
                Value::Int(1),
                Value::Str("b"),
                Value::Str("c"),
                Value::Str("d")
            ])
            .is_err());
    }
}
