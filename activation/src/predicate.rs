//! Cohort expressions compiled to native code. The CEL syntax tree of an expression becomes a
//! tree of [`Node`]s evaluated straight over the borrowed profile: no CEL context or values are
//! built, nothing is copied, windows are counted only for the counters read.
//!
//! The result is the interpreter's, by construction:
//! - what the tree covers (the profile's fields, literals, `==` `!=` `<` `<=` `>` `>=`, `&&`
//!   `||` `!` `?:`, `in`, `[]`, `has()`, `size()`, arithmetic, `contains` `startsWith`
//!   `endsWith`) follows the interpreter's rules, including CEL's error absorption in `&&` and
//!   `||` (`error || true` is `true`) and which error wins when both sides fail;
//! - a sub-expression it does not cover (comprehensions such as `exists`, conversions such as
//!   `int()`, bytes, optionals...) is run by the interpreter on its own, the result brought back;
//! - the only error it reports itself is a missing key (CEL's "no such key", which makes a cohort
//!   "not a member"); wherever the interpreter would fail otherwise (a type mismatch, an
//!   overflow) it stops, and the whole expression is run by the interpreter, so that the error
//!   is exactly the one the interpreter reports.
//!
//! `tests/compiled.rs` checks native == interpreted over random profiles and expressions.

use crate::inputs::Reads;
use crate::view::{days_since_last_engagement, ProfileView};
use cdp_proto::{EventCounter, Profile, Source, Timestamp};
use cel::common::ast::{operators, Expr, LiteralValue};
use cel::{Context, Env, ExecutionError, IdedExpr, Value};
use serde_json::Value as Json;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What every cohort evaluated on one profile at one time shares: the profile, the time and,
/// built on first use and at most once, the interpreter's context for what native code leaves
/// to it.
pub struct Scope<'p> {
    profile: &'p Profile,
    now: Timestamp,
    days_since: i64,
    /// What the interpreter's view must hold (it is built with only these fields).
    reads: &'p Reads,
    env: &'p Arc<Env>,
    context: OnceCell<Result<Context<'static, 'static>, String>>,
}

impl<'p> Scope<'p> {
    pub(crate) fn new(
        profile: &'p Profile,
        now: Timestamp,
        reads: &'p Reads,
        env: &'p Arc<Env>,
    ) -> Self {
        Self {
            profile,
            now,
            days_since: days_since_last_engagement(profile, now),
            reads,
            env,
            context: OnceCell::new(),
        }
    }

    pub fn profile(&self) -> &'p Profile {
        self.profile
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The interpreter's context: `profile` bound to the view of the fields read.
    pub fn context(&self) -> Result<&Context<'static, 'static>, &str> {
        self.context
            .get_or_init(|| {
                let view = ProfileView::with_reads(self.profile, self.now, self.reads);
                let mut ctx = Context::with_env(self.env.clone());
                ctx.add_variable("profile", view)
                    .map_err(|e| e.to_string())?;
                Ok(ctx)
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// Why native evaluation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// CEL's "no such key": a missing map key or field.
    NoSuchKey,
    /// Any other outcome the interpreter has to decide.
    Interpret,
}

type Eval<'a> = Result<Val<'a>, Stop>;

/// How a native evaluation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The expression's value.
    Bool(bool),
    /// It failed with "no such key".
    NoSuchKey,
    /// The interpreter must run the expression.
    Interpret,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) struct Predicate {
    /// `None` when nothing of the expression compiles natively.
    root: Option<Node>,
}

/// How much of an expression runs natively (see [`crate::Cohort::compilation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compilation {
    /// All of it.
    Native,
    /// Its boolean skeleton; some operands are run by the interpreter.
    Partial,
    /// None: the interpreter runs it.
    Interpreted,
}

impl Predicate {
    pub(crate) fn compile(expr: &IdedExpr) -> Self {
        let root = compile(expr);
        Self {
            root: (!matches!(root, Node::Interpreted(_))).then_some(root),
        }
    }

    pub(crate) fn compilation(&self) -> Compilation {
        match &self.root {
            None => Compilation::Interpreted,
            Some(n) if n.interprets() => Compilation::Partial,
            Some(_) => Compilation::Native,
        }
    }

    pub(crate) fn evaluate(&self, scope: &Scope) -> Verdict {
        let Some(root) = &self.root else {
            return Verdict::Interpret;
        };
        match root.eval(scope) {
            Ok(Val::Bool(b)) => Verdict::Bool(b),
            Err(Stop::NoSuchKey) => Verdict::NoSuchKey,
            Ok(_) | Err(Stop::Interpret) => Verdict::Interpret,
        }
    }
}

/// A field of the profile view (see [`ProfileView`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    CanonicalId,
    LifecycleStage,
    Segment,
    TotalTouchpoints,
    ChannelsActive,
    DaysSinceLastEngagement,
    Counts,
    Traits,
    Consent,
    Identifiers,
}

impl Field {
    const ALL: [(&'static str, Field); 10] = [
        ("canonical_id", Field::CanonicalId),
        ("lifecycle_stage", Field::LifecycleStage),
        ("segment", Field::Segment),
        ("total_touchpoints", Field::TotalTouchpoints),
        ("channels_active", Field::ChannelsActive),
        ("days_since_last_engagement", Field::DaysSinceLastEngagement),
        ("counts", Field::Counts),
        ("traits", Field::Traits),
        ("consent", Field::Consent),
        ("identifiers", Field::Identifiers),
    ];

    fn of(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn value<'a>(self, s: &Scope<'a>) -> Val<'a> {
        let p = s.profile;
        let a = &p.attributes;
        match self {
            Field::CanonicalId => Val::Str(Cow::Borrowed(&p.canonical_id)),
            Field::LifecycleStage => Val::Str(Cow::Borrowed(
                a.lifecycle_stage.as_deref().unwrap_or_default(),
            )),
            Field::Segment => Val::Str(Cow::Borrowed(a.segment.as_deref().unwrap_or_default())),
            Field::TotalTouchpoints => Val::Int(a.total_touchpoints as i64),
            Field::ChannelsActive => Val::Channels(&a.channels_active),
            Field::DaysSinceLastEngagement => Val::Int(s.days_since),
            Field::Counts => Val::Counters(&a.counts),
            Field::Traits => Val::Traits(&a.traits),
            Field::Consent => Val::Consent(&p.consent.0),
            Field::Identifiers => Val::Identifiers(&p.identifiers),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy)]
enum StrFn {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Box<str>),
    /// The variable `profile`.
    Profile,
    /// `profile.<field>`.
    Field(Field),
    Select(Box<Node>, Box<str>),
    Has(Box<Node>, Box<str>),
    Index(Box<[Node; 2]>),
    List(Vec<Node>),
    And(Box<[Node; 2]>),
    Or(Box<[Node; 2]>),
    Not(Box<Node>),
    Cond(Box<[Node; 3]>),
    Cmp(Cmp, Box<[Node; 2]>),
    In(Box<[Node; 2]>),
    Arith(Arith, Box<[Node; 2]>),
    Neg(Box<Node>),
    Size(Box<Node>),
    /// `target.f(arg)`: `[target, arg]`.
    StrFn(StrFn, Box<[Node; 2]>),
    /// Run by the interpreter.
    Interpreted(Box<IdedExpr>),
}

fn compile(e: &IdedExpr) -> Node {
    let interpreted = || Node::Interpreted(Box::new(e.clone()));
    // An operation on an operand the interpreter computes is left to it whole; only the boolean
    // connectives mix native and interpreted operands.
    let all_native = |nodes: &[Node]| !nodes.iter().any(|n| matches!(n, Node::Interpreted(_)));
    match &e.expr {
        Expr::Literal(l) => match l {
            LiteralValue::Boolean(b) => Node::Bool(*b.inner()),
            LiteralValue::Int(i) => Node::Int(*i.inner()),
            LiteralValue::UInt(u) => Node::UInt(*u.inner()),
            LiteralValue::Double(d) => Node::Double(*d.inner()),
            LiteralValue::String(s) => Node::Str(s.inner().into()),
            LiteralValue::Null => Node::Null,
            LiteralValue::Bytes(_) => interpreted(),
        },
        Expr::Ident(name) if name == "profile" => Node::Profile,
        Expr::Select(select) => {
            let operand = compile(&select.operand);
            let field: Box<str> = select.field.as_str().into();
            match operand {
                Node::Interpreted(_) => interpreted(),
                _ if select.test => Node::Has(Box::new(operand), field),
                Node::Profile => match Field::of(&field) {
                    Some(f) => Node::Field(f),
                    None => Node::Select(Box::new(operand), field),
                },
                _ => Node::Select(Box::new(operand), field),
            }
        }
        Expr::List(list) if list.optional_indices.is_empty() => {
            let elements: Vec<Node> = list.elements.iter().map(compile).collect();
            if all_native(&elements) {
                Node::List(elements)
            } else {
                interpreted()
            }
        }
        Expr::Call(call) => {
            let args: Vec<Node> = call.args.iter().map(compile).collect();
            let target = call.target.as_deref().map(compile);
            let pair = |args: Vec<Node>| -> Box<[Node; 2]> {
                let [a, b]: [Node; 2] = args.try_into().expect("two arguments");
                Box::new([a, b])
            };
            let name = call.func_name.as_str();
            let node = match (target, args.len()) {
                (None, 2) if name == operators::LOGICAL_AND => return Node::And(pair(args)),
                (None, 2) if name == operators::LOGICAL_OR => return Node::Or(pair(args)),
                (None, 3) if name == operators::CONDITIONAL => {
                    let [c, t, f]: [Node; 3] = args.try_into().expect("three arguments");
                    return Node::Cond(Box::new([c, t, f]));
                }
                (None, 2) if !all_native(&args) => None,
                (None, 2) => {
                    let cmp = match name {
                        operators::EQUALS => Some(Cmp::Eq),
                        operators::NOT_EQUALS => Some(Cmp::Ne),
                        operators::LESS => Some(Cmp::Lt),
                        operators::LESS_EQUALS => Some(Cmp::Le),
                        operators::GREATER => Some(Cmp::Gt),
                        operators::GREATER_EQUALS => Some(Cmp::Ge),
                        _ => None,
                    };
                    let arith = match name {
                        operators::ADD => Some(Arith::Add),
                        operators::SUBSTRACT => Some(Arith::Sub),
                        operators::MULTIPLY => Some(Arith::Mul),
                        operators::DIVIDE => Some(Arith::Div),
                        operators::MODULO => Some(Arith::Rem),
                        _ => None,
                    };
                    if let Some(cmp) = cmp {
                        Some(Node::Cmp(cmp, pair(args)))
                    } else if let Some(arith) = arith {
                        Some(Node::Arith(arith, pair(args)))
                    } else if name == operators::IN {
                        Some(Node::In(pair(args)))
                    } else if name == operators::INDEX {
                        Some(Node::Index(pair(args)))
                    } else {
                        None
                    }
                }
                (None, 1) if !all_native(&args) => None,
                (None, 1) => {
                    let [a]: [Node; 1] = args.try_into().expect("one argument");
                    match name {
                        operators::LOGICAL_NOT => Some(Node::Not(Box::new(a))),
                        operators::NEGATE => Some(Node::Neg(Box::new(a))),
                        "size" => Some(Node::Size(Box::new(a))),
                        _ => None,
                    }
                }
                (Some(t), 0) if name == "size" && all_native(std::slice::from_ref(&t)) => {
                    Some(Node::Size(Box::new(t)))
                }
                (Some(t), 1) => {
                    let f = match name {
                        "contains" => Some(StrFn::Contains),
                        "startsWith" => Some(StrFn::StartsWith),
                        "endsWith" => Some(StrFn::EndsWith),
                        _ => None,
                    };
                    let [a]: [Node; 1] = args.try_into().expect("one argument");
                    match f {
                        Some(f) if all_native(&[t.clone(), a.clone()]) => {
                            Some(Node::StrFn(f, Box::new([t, a])))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            node.unwrap_or_else(interpreted)
        }
        _ => interpreted(),
    }
}

impl Node {
    /// Whether some part is left to the interpreter.
    fn interprets(&self) -> bool {
        match self {
            Node::Interpreted(_) => true,
            Node::And(n) | Node::Or(n) => n.iter().any(Node::interprets),
            Node::Cond(n) => n.iter().any(Node::interprets),
            // Operands of everything else are native (see `compile`).
            _ => false,
        }
    }

    fn eval<'a>(&'a self, s: &'a Scope<'a>) -> Eval<'a> {
        Ok(match self {
            Node::Null => Val::Null,
            Node::Bool(b) => Val::Bool(*b),
            Node::Int(i) => Val::Int(*i),
            Node::UInt(u) => Val::UInt(*u),
            Node::Double(d) => Val::Double(*d),
            Node::Str(v) => Val::Str(Cow::Borrowed(v)),
            Node::Profile => Val::Profile,
            Node::Field(f) => f.value(s),
            Node::Select(operand, field) => {
                let v = operand.eval(s)?;
                if !v.is_map() {
                    return Err(Stop::Interpret);
                }
                v.get(field, s).ok_or(Stop::NoSuchKey)?
            }
            Node::Has(operand, field) => {
                let v = operand.eval(s)?;
                if !v.is_map() {
                    return Err(Stop::Interpret);
                }
                Val::Bool(v.get(field, s).is_some())
            }
            Node::Index(n) => {
                let container = n[0].eval(s)?;
                let index = n[1].eval(s)?;
                index_into(container, &index, s)?
            }
            Node::List(items) => {
                Val::List(items.iter().map(|n| n.eval(s)).collect::<Result<_, _>>()?)
            }
            Node::And(n) => {
                let left = as_operand(n[0].eval(s))?;
                if left == Ok(false) {
                    return Ok(Val::Bool(false));
                }
                let right = n[1].eval(s)?;
                match (left, right.as_bool()) {
                    (Ok(true), Some(r)) => Val::Bool(r),
                    (Err(_), Some(false)) => Val::Bool(false),
                    (Err(Operand::NoSuchKey), _) => return Err(Stop::NoSuchKey),
                    _ => return Err(Stop::Interpret),
                }
            }
            Node::Or(n) => {
                let left = as_operand(n[0].eval(s))?;
                if left == Ok(true) {
                    return Ok(Val::Bool(true));
                }
                let right = n[1].eval(s)?;
                match (left, right.as_bool()) {
                    (Ok(false), Some(r)) => Val::Bool(r),
                    (Err(_), Some(true)) => Val::Bool(true),
                    (Err(Operand::NoSuchKey), _) => return Err(Stop::NoSuchKey),
                    _ => return Err(Stop::Interpret),
                }
            }
            Node::Not(n) => Val::Bool(!n.eval(s)?.as_bool().ok_or(Stop::Interpret)?),
            Node::Cond(n) => {
                if n[0].eval(s)?.as_bool().ok_or(Stop::Interpret)? {
                    n[1].eval(s)?
                } else {
                    n[2].eval(s)?
                }
            }
            Node::Cmp(op, n) => {
                let l = n[0].eval(s)?;
                let r = n[1].eval(s)?;
                Val::Bool(match op {
                    Cmp::Eq => equals(&l, &r)?,
                    Cmp::Ne => !equals(&l, &r)?,
                    Cmp::Lt => compare(&l, &r)? == Ordering::Less,
                    Cmp::Le => compare(&l, &r)? != Ordering::Greater,
                    Cmp::Gt => compare(&l, &r)? == Ordering::Greater,
                    Cmp::Ge => compare(&l, &r)? != Ordering::Less,
                })
            }
            Node::In(n) => {
                let item = n[0].eval(s)?;
                let container = n[1].eval(s)?;
                Val::Bool(contains(&container, &item, s)?)
            }
            Node::Arith(op, n) => {
                let l = n[0].eval(s)?;
                let r = n[1].eval(s)?;
                arithmetic(*op, l, r).ok_or(Stop::Interpret)?
            }
            Node::Neg(n) => match n.eval(s)? {
                Val::Int(i) => Val::Int(i.checked_neg().ok_or(Stop::Interpret)?),
                Val::Double(d) => Val::Double(-d),
                _ => return Err(Stop::Interpret),
            },
            Node::Size(n) => Val::Int(n.eval(s)?.size().ok_or(Stop::Interpret)?),
            Node::StrFn(f, n) => {
                // As the interpreter does: the argument first, then the target.
                let arg = n[1].eval(s)?;
                let target = n[0].eval(s)?;
                let (Val::Str(t), Val::Str(a)) = (&target, &arg) else {
                    return Err(Stop::Interpret);
                };
                Val::Bool(match f {
                    StrFn::Contains => t.contains(a.as_ref()),
                    StrFn::StartsWith => t.starts_with(a.as_ref()),
                    StrFn::EndsWith => t.ends_with(a.as_ref()),
                })
            }
            Node::Interpreted(expr) => {
                let ctx = s.context().map_err(|_| Stop::Interpret)?;
                match Value::resolve(expr, ctx) {
                    Ok(v) => Val::from_value(v),
                    Err(ExecutionError::NoSuchKey(_)) => return Err(Stop::NoSuchKey),
                    Err(_) => return Err(Stop::Interpret),
                }
            }
        })
    }
}

/// The left operand of `&&` / `||`, as the interpreter sees it: a bool or an error it may absorb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    NoSuchKey,
    NotBool,
}

fn as_operand(v: Eval<'_>) -> Result<Result<bool, Operand>, Stop> {
    match v {
        Ok(v) => Ok(v.as_bool().ok_or(Operand::NotBool)),
        Err(Stop::NoSuchKey) => Ok(Err(Operand::NoSuchKey)),
        // Whether it would be absorbed depends on what the error is: the interpreter decides.
        Err(Stop::Interpret) => Err(Stop::Interpret),
    }
}

/// A value as CEL sees it, borrowed from the profile or the expression where it can be.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// The profile view: a map of its fields.
    Profile,
    /// `channels_active`: a list of strings.
    Channels(&'a BTreeSet<Source>),
    /// `counts`: a map of event name to counter.
    Counters(&'a BTreeMap<String, EventCounter>),
    /// One counter: a map of `total`, `last_1d`, `last_7d`, `last_30d`.
    Counter(&'a EventCounter),
    Traits(&'a BTreeMap<String, Json>),
    Consent(&'a BTreeMap<String, bool>),
    /// `identifiers`: a map of identifier kind to how many the profile has.
    Identifiers(&'a [cdp_proto::Identifier]),
    /// A JSON array or object (scalars are converted).
    Json(&'a Json),
    List(Vec<Val<'a>>),
    /// Another value the interpreter returned: only the interpreter can use it.
    Opaque,
}

const COUNTER_FIELDS: [&str; 4] = ["total", "last_1d", "last_7d", "last_30d"];

impl<'a> Val<'a> {
    fn json(v: &'a Json) -> Self {
        // As serde serialises them into CEL: a non-negative integer is a uint.
        match v {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Val::UInt(u)
                } else if let Some(i) = n.as_i64() {
                    Val::Int(i)
                } else {
                    n.as_f64().map(Val::Double).unwrap_or(Val::Opaque)
                }
            }
            Json::String(s) => Val::Str(Cow::Borrowed(s)),
            Json::Array(_) | Json::Object(_) => Val::Json(v),
        }
    }

    fn from_value(v: Value) -> Self {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Int(i) => Val::Int(i),
            Value::UInt(u) => Val::UInt(u),
            Value::Float(d) => Val::Double(d),
            Value::String(s) => Val::Str(Cow::Owned(s.as_str().to_owned())),
            _ => Val::Opaque,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_map(&self) -> bool {
        matches!(
            self,
            Val::Profile
                | Val::Counters(_)
                | Val::Counter(_)
                | Val::Traits(_)
                | Val::Consent(_)
                | Val::Identifiers(_)
        ) || matches!(self, Val::Json(Json::Object(_)))
    }

    fn is_list(&self) -> bool {
        self.list_len().is_some()
    }

    /// The value of `key` in a map (all maps here have string keys).
    fn get(&self, key: &str, s: &Scope<'a>) -> Option<Val<'a>> {
        match self {
            Val::Profile => Field::of(key).map(|f| f.value(s)),
            Val::Counters(m) => m.get(key).map(Val::Counter),
            Val::Counter(c) => {
                let days = match key {
                    "total" => return Some(Val::Int(c.total as i64)),
                    "last_1d" => 1,
                    "last_7d" => 7,
                    "last_30d" => 30,
                    _ => return None,
                };
                Some(Val::Int(c.within_days(s.now, days) as i64))
            }
            Val::Traits(m) => m.get(key).map(Val::json),
            Val::Consent(m) => m.get(key).map(|b| Val::Bool(*b)),
            Val::Identifiers(ids) => {
                let n = ids.iter().filter(|id| id.kind.as_str() == key).count();
                (n > 0).then_some(Val::Int(n as i64))
            }
            Val::Json(Json::Object(m)) => m.get(key).map(Val::json),
            _ => None,
        }
    }

    /// How many items a list has.
    fn list_len(&self) -> Option<usize> {
        match self {
            Val::Channels(c) => Some(c.len()),
            Val::List(items) => Some(items.len()),
            Val::Json(Json::Array(items)) => Some(items.len()),
            _ => None,
        }
    }

    /// Item `i` of a list.
    fn item(&self, i: usize) -> Option<Val<'a>> {
        match self {
            Val::Channels(c) => c.iter().nth(i).map(|s| Val::Str(Cow::Borrowed(s.as_str()))),
            Val::List(items) => items.get(i).cloned(),
            Val::Json(Json::Array(items)) => items.get(i).map(Val::json),
            _ => None,
        }
    }

    /// CEL's `size()`: characters of a string, items of a list, entries of a map.
    fn size(&self) -> Option<i64> {
        Some(match self {
            Val::Str(s) => s.chars().count() as i64,
            Val::Profile => Field::ALL.len() as i64,
            Val::Channels(c) => c.len() as i64,
            Val::Counters(m) => m.len() as i64,
            Val::Counter(_) => COUNTER_FIELDS.len() as i64,
            Val::Traits(m) => m.len() as i64,
            Val::Consent(m) => m.len() as i64,
            Val::Identifiers(ids) => {
                let mut kinds: Vec<&str> = ids.iter().map(|id| id.kind.as_str()).collect();
                kinds.sort_unstable();
                kinds.dedup();
                kinds.len() as i64
            }
            Val::Json(Json::Array(a)) => a.len() as i64,
            Val::Json(Json::Object(m)) => m.len() as i64,
            Val::List(items) => items.len() as i64,
            _ => return None,
        })
    }
}

/// `container[index]`.
fn index_into<'a>(container: Val<'a>, index: &Val<'a>, s: &Scope<'a>) -> Eval<'a> {
    if container.is_map() {
        return match index {
            Val::Str(key) => container.get(key, s).ok_or(Stop::NoSuchKey),
            // Keys are strings: any other key the interpreter can look up is missing.
            Val::Int(_) | Val::UInt(_) | Val::Bool(_) | Val::Double(_) => Err(Stop::NoSuchKey),
            _ => Err(Stop::Interpret),
        };
    }
    let i = match index {
        Val::Int(i) => usize::try_from(*i).ok(),
        Val::UInt(u) => usize::try_from(*u).ok(),
        _ => None,
    };
    match (container, i) {
        (Val::List(mut items), Some(i)) if i < items.len() => Ok(items.swap_remove(i)),
        (list, Some(i)) => list.item(i).ok_or(Stop::Interpret),
        _ => Err(Stop::Interpret),
    }
}

/// `item in container`.
fn contains(container: &Val<'_>, item: &Val<'_>, s: &Scope<'_>) -> Result<bool, Stop> {
    if container.is_map() {
        return match item {
            Val::Str(key) => Ok(container.get(key, s).is_some()),
            Val::Int(_) | Val::UInt(_) | Val::Bool(_) | Val::Double(_) => Ok(false),
            _ => Err(Stop::Interpret),
        };
    }
    if let (Val::Channels(c), Val::Str(name)) = (container, item) {
        return Ok(c.iter().any(|s| s.as_str() == name.as_ref()));
    }
    let n = container.list_len().ok_or(Stop::Interpret)?;
    for i in 0..n {
        if equals(&container.item(i).ok_or(Stop::Interpret)?, item)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// CEL's numeric ordering across int, uint and double, as the interpreter computes it.
fn numeric(l: &Val, r: &Val) -> Option<Option<Ordering>> {
    Some(match (l, r) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        (Val::Int(a), Val::UInt(b)) => Some(u64::try_from(*a).map_or(Ordering::Less, |a| a.cmp(b))),
        (Val::Int(a), Val::Double(b)) => (*a as f64).partial_cmp(b),
        (Val::UInt(a), Val::UInt(b)) => Some(a.cmp(b)),
        (Val::UInt(a), Val::Int(b)) => {
            Some(i64::try_from(*a).map_or(Ordering::Greater, |a| a.cmp(b)))
        }
        (Val::UInt(a), Val::Double(b)) => (*a as f64).partial_cmp(b),
        (Val::Double(a), Val::Double(b)) => a.partial_cmp(b),
        (Val::Double(a), Val::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Double(a), Val::UInt(b)) => a.partial_cmp(&(*b as f64)),
        _ => return None,
    })
}

/// `l < r` and the like: numbers, strings and bools compare; anything else is an error.
fn compare(l: &Val, r: &Val) -> Result<Ordering, Stop> {
    if let Some(ordering) = numeric(l, r) {
        // NaN compares to nothing: an error.
        return ordering.ok_or(Stop::Interpret);
    }
    match (l, r) {
        (Val::Str(a), Val::Str(b)) => Ok(a.as_ref().cmp(b.as_ref())),
        (Val::Bool(a), Val::Bool(b)) => Ok(a.cmp(b)),
        _ => Err(Stop::Interpret),
    }
}

/// `l == r`: never an error in CEL; values of different kinds are unequal.
fn equals(l: &Val, r: &Val) -> Result<bool, Stop> {
    if let Some(ordering) = numeric(l, r) {
        return Ok(ordering == Some(Ordering::Equal));
    }
    Ok(match (l, r) {
        (Val::Opaque, _) | (_, Val::Opaque) => return Err(Stop::Interpret),
        (Val::Str(a), Val::Str(b)) => a == b,
        (Val::Bool(a), Val::Bool(b)) => a == b,
        (Val::Null, Val::Null) => true,
        (Val::Channels(a), Val::List(b)) | (Val::List(b), Val::Channels(a)) => {
            // `channels_active == ["web"]`, without building a list.
            if a.len() != b.len() {
                return Ok(false);
            }
            for (x, y) in a.iter().zip(b) {
                if !equals(&Val::Str(Cow::Borrowed(x.as_str())), y)? {
                    return Ok(false);
                }
            }
            true
        }
        _ if l.is_list() && r.is_list() => {
            let n = l.list_len().unwrap_or_default();
            if r.list_len() != Some(n) {
                return Ok(false);
            }
            for i in 0..n {
                let (x, y) = (l.item(i), r.item(i));
                let (Some(x), Some(y)) = (x, y) else {
                    return Err(Stop::Interpret);
                };
                if !equals(&x, &y)? {
                    return Ok(false);
                }
            }
            true
        }
        // Maps compare key by key, with numeric keys converted: the interpreter knows how.
        _ if l.is_map() && r.is_map() => return Err(Stop::Interpret),
        _ => false,
    })
}

/// `+ - * / %` where they cannot fail; `None` where the interpreter decides (an overflow, a
/// division by zero, a type mismatch).
fn arithmetic<'a>(op: Arith, l: Val<'a>, r: Val<'a>) -> Option<Val<'a>> {
    Some(match (l, r) {
        (Val::Int(a), Val::Int(b)) => Val::Int(match op {
            Arith::Add => a.checked_add(b)?,
            Arith::Sub => a.checked_sub(b)?,
            Arith::Mul => a.checked_mul(b)?,
            Arith::Div => a.checked_div(b)?,
            Arith::Rem => a.checked_rem(b)?,
        }),
        (Val::UInt(a), Val::UInt(b)) => Val::UInt(match op {
            Arith::Add => a.checked_add(b)?,
            Arith::Sub => a.checked_sub(b)?,
            Arith::Mul => a.checked_mul(b)?,
            Arith::Div => a.checked_div(b)?,
            Arith::Rem => a.checked_rem(b)?,
        }),
        (Val::Double(a), Val::Double(b)) => Val::Double(match op {
            Arith::Add => a + b,
            Arith::Sub => a - b,
            Arith::Mul => a * b,
            Arith::Div => a / b,
            Arith::Rem => return None,
        }),
        (Val::Str(a), Val::Str(b)) if matches!(op, Arith::Add) => {
            Val::Str(Cow::Owned(format!("{a}{b}")))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(source: &str) -> Compilation {
        let program = cel::Program::compile(source).unwrap();
        Predicate::compile(program.expression()).compilation()
    }

    #[test]
    fn what_compiles_natively() {
        for e in [
            r#"profile.lifecycle_stage == "lead" && profile.counts["Pricing Viewed"].last_7d >= 2"#,
            r#""web" in profile.channels_active && !("Order Completed" in profile.counts)"#,
            r#"has(profile.traits.plan) && profile.traits["plan"].startsWith("pro")"#,
            "size(profile.channels_active) >= 3 || profile.days_since_last_engagement - 7 > 0",
            r#"profile.channels_active == ["web"] ? true : profile.consent["email"] == true"#,
        ] {
            assert_eq!(compiled(e), Compilation::Native, "{e}");
        }
        assert_eq!(
            compiled(
                r#"profile.total_touchpoints > 3 && profile.channels_active.exists(c, c == "web")"#
            ),
            Compilation::Partial
        );
        assert_eq!(
            compiled("int(profile.traits.age) > 3"),
            Compilation::Interpreted
        );
    }
}
