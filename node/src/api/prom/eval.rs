//! PromQL evaluation over series fetched once for the whole query.
//!
//! The parser (promql-parser) gives the expression; this module gives its value at
//! a time, with Prometheus' semantics for what Herd supports: instant and range
//! vector selectors with the four matchers and `offset`; arithmetic (`+ - * / % ^`)
//! and comparisons (with and without `bool`) between scalars and vectors, one-to-one
//! vector matching with `on`/`ignoring`, and `and`/`or`/`unless`; `rate`, `irate`,
//! `increase`, `delta`, `idelta`, `deriv`, the `*_over_time` functions, `abs`,
//! `ceil`, `floor`, `sqrt`, `exp`, `ln`, `log2`, `log10`, `clamp_min`, `clamp_max`,
//! `time`, `vector`, `scalar`; `sum avg min max count group stddev stdvar topk
//! bottomk quantile` with `by`/`without`. Anything else (subqueries, `@`,
//! `group_left`/`group_right`, other functions and aggregations) is an error that
//! names the construct.
use std::collections::{BTreeMap, HashMap};

use promql_parser::label::{MatchOp, Matcher as PMatcher};
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, Offset, VectorMatchCardinality,
    VectorSelector,
};

use super::names::{PromLabels, NAME_LABEL};

/// How far back an instant selector looks for a sample (Prometheus' default).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// A fetched series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: PromLabels,
    pub points: Vec<(i64, f64)>,
}

/// A value of an expression at one time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Str(String),
    Vector(Vec<(PromLabels, f64)>),
    Matrix(Vec<Series>),
}

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The query uses what Herd does not evaluate (Prometheus' `bad_data`).
    #[error("{0} is not supported by Herd's PromQL")]
    Unsupported(String),
    /// The query is valid but cannot be evaluated on this data (`execution`).
    #[error("{0}")]
    Execution(String),
}

fn unsupported(what: impl Into<String>) -> EvalError {
    EvalError::Unsupported(what.into())
}

/// A selector's matchers as sets (one set, or one per `or` alternative), with
/// the metric name among them.
pub fn selector_sets(vs: &VectorSelector) -> Vec<Vec<PMatcher>> {
    let name = vs
        .name
        .as_ref()
        .map(|n| PMatcher::new(MatchOp::Equal, NAME_LABEL, n));
    let mut sets: Vec<Vec<PMatcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![vs.matchers.matchers.clone()]
    } else {
        vs.matchers.or_matchers.clone()
    };
    if let Some(n) = name {
        for s in &mut sets {
            s.push(n.clone());
        }
    }
    sets
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

/// Every selector of an expression with the time before and after an evaluation
/// time it reads: `(selector, back_ms, ahead_ms)`. Refuses what is not supported
/// before anything is fetched.
pub fn selectors(e: &Expr) -> Result<Vec<(&VectorSelector, i64, i64)>, EvalError> {
    let mut out = Vec::new();
    walk(e, &mut out)?;
    Ok(out)
}

fn walk<'a>(e: &'a Expr, out: &mut Vec<(&'a VectorSelector, i64, i64)>) -> Result<(), EvalError> {
    match e {
        Expr::VectorSelector(vs) => {
            check_selector(vs)?;
            let off = offset_ms(&vs.offset);
            out.push((vs, LOOKBACK_MS + off, -off));
        }
        Expr::MatrixSelector(ms) => {
            check_selector(&ms.vs)?;
            let off = offset_ms(&ms.vs.offset);
            out.push((&ms.vs, ms.range.as_millis() as i64 + off, -off));
        }
        Expr::Aggregate(a) => {
            walk(&a.expr, out)?;
            if let Some(p) = &a.param {
                walk(p, out)?;
            }
        }
        Expr::Unary(u) => walk(&u.expr, out)?,
        Expr::Binary(b) => {
            walk(&b.lhs, out)?;
            walk(&b.rhs, out)?;
        }
        Expr::Paren(p) => walk(&p.expr, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Subquery(_) => return Err(unsupported("a subquery")),
        Expr::Extension(_) => return Err(unsupported("an extension expression")),
    }
    Ok(())
}

fn check_selector(vs: &VectorSelector) -> Result<(), EvalError> {
    if vs.at.is_some() {
        return Err(unsupported("the @ modifier"));
    }
    Ok(())
}

/// Whether a series is one `vs` selects (what [`selector_sets`] says, read in
/// place: this runs for every series at every step).
fn selects(vs: &VectorSelector, labels: &PromLabels) -> bool {
    let value = |name: &str| labels.get(name).map(String::as_str).unwrap_or("");
    let all = |set: &[PMatcher]| set.iter().all(|m| m.is_match(value(&m.name)));
    vs.name.as_ref().is_none_or(|n| value(NAME_LABEL) == n)
        && if vs.matchers.or_matchers.is_empty() {
            all(&vs.matchers.matchers)
        } else {
            vs.matchers.or_matchers.iter().any(|set| all(set))
        }
}

/// Evaluates expressions over the series fetched for them.
pub struct Evaluator {
    data: Vec<Series>,
}

fn drop_name(mut l: PromLabels) -> PromLabels {
    l.remove(NAME_LABEL);
    l
}

impl Evaluator {
    pub fn new(data: Vec<Series>) -> Evaluator {
        Evaluator { data }
    }

    /// The value of `e` at `t_ms`.
    pub fn eval(&self, e: &Expr, t: i64) -> Result<Value, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter().map(|(l, x)| (drop_name(l), -x)).collect(),
                )),
                _ => Err(EvalError::Execution(
                    "unary minus needs a scalar or an instant vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant(vs, t))),
            Expr::MatrixSelector(ms) => {
                let range = ms.range.as_millis() as i64;
                Ok(Value::Matrix(self.range(&ms.vs, t, range)))
            }
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Subquery(_) => Err(unsupported("a subquery")),
            Expr::Extension(_) => Err(unsupported("an extension expression")),
        }
    }

    /// The latest sample of each selected series within the lookback.
    fn instant(&self, vs: &VectorSelector, t: i64) -> Vec<(PromLabels, f64)> {
        let at = t - offset_ms(&vs.offset);
        self.data
            .iter()
            .filter(|s| selects(vs, &s.labels))
            .filter_map(|s| {
                let i = s.points.partition_point(|p| p.0 <= at);
                let (ts, v) = *s.points.get(i.checked_sub(1)?)?;
                (ts > at - LOOKBACK_MS).then(|| (s.labels.clone(), v))
            })
            .collect()
    }

    /// The samples of each selected series in `(t - range, t]` (shifted by offset).
    fn range(&self, vs: &VectorSelector, t: i64, range: i64) -> Vec<Series> {
        let at = t - offset_ms(&vs.offset);
        self.data
            .iter()
            .filter(|s| selects(vs, &s.labels))
            .filter_map(|s| {
                let lo = s.points.partition_point(|p| p.0 <= at - range);
                let hi = s.points.partition_point(|p| p.0 <= at);
                (hi > lo).then(|| Series {
                    labels: s.labels.clone(),
                    points: s.points[lo..hi].to_vec(),
                })
            })
            .collect()
    }

    fn scalar_arg(&self, c: &Call, i: usize, t: i64) -> Result<f64, EvalError> {
        match c.args.args.get(i).map(|a| self.eval(a, t)).transpose()? {
            Some(Value::Scalar(v)) => Ok(v),
            _ => Err(EvalError::Execution(format!(
                "{}: argument {} must be a scalar",
                c.func.name,
                i + 1
            ))),
        }
    }

    fn vector_arg(&self, c: &Call, i: usize, t: i64) -> Result<Vec<(PromLabels, f64)>, EvalError> {
        match c.args.args.get(i).map(|a| self.eval(a, t)).transpose()? {
            Some(Value::Vector(v)) => Ok(v),
            _ => Err(EvalError::Execution(format!(
                "{}: argument {} must be an instant vector",
                c.func.name,
                i + 1
            ))),
        }
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, EvalError> {
        let name = c.func.name;
        let map = |f: &dyn Fn(f64) -> f64, v: Vec<(PromLabels, f64)>| {
            Value::Vector(v.into_iter().map(|(l, x)| (drop_name(l), f(x))).collect())
        };
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![(
                PromLabels::new(),
                self.scalar_arg(c, 0, t)?,
            )])),
            "scalar" => {
                let v = self.vector_arg(c, 0, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].1 } else { f64::NAN }))
            }
            "abs" => Ok(map(&f64::abs, self.vector_arg(c, 0, t)?)),
            "ceil" => Ok(map(&f64::ceil, self.vector_arg(c, 0, t)?)),
            "floor" => Ok(map(&f64::floor, self.vector_arg(c, 0, t)?)),
            "sqrt" => Ok(map(&f64::sqrt, self.vector_arg(c, 0, t)?)),
            "exp" => Ok(map(&f64::exp, self.vector_arg(c, 0, t)?)),
            "ln" => Ok(map(&f64::ln, self.vector_arg(c, 0, t)?)),
            "log2" => Ok(map(&f64::log2, self.vector_arg(c, 0, t)?)),
            "log10" => Ok(map(&f64::log10, self.vector_arg(c, 0, t)?)),
            "clamp_min" => {
                let lo = self.scalar_arg(c, 1, t)?;
                Ok(map(&|x| x.max(lo), self.vector_arg(c, 0, t)?))
            }
            "clamp_max" => {
                let hi = self.scalar_arg(c, 1, t)?;
                Ok(map(&|x| x.min(hi), self.vector_arg(c, 0, t)?))
            }
            _ => self.range_call(c, t),
        }
    }

    /// The functions of a range vector.
    fn range_call(&self, c: &Call, t: i64) -> Result<Value, EvalError> {
        let name = c.func.name;
        let (arg, param) = match name {
            "quantile_over_time" => (1, Some(self.scalar_arg(c, 0, t)?)),
            _ => (0, None),
        };
        let Some(Expr::MatrixSelector(ms)) = c.args.args.get(arg).map(|a| strip_parens(a)) else {
            return Err(match c.args.args.get(arg).map(|a| strip_parens(a)) {
                Some(Expr::Subquery(_)) => unsupported("a subquery"),
                _ if is_known_range_fn(name) => EvalError::Execution(format!(
                    "{name}: argument {} must be a range vector selector such as m[5m]",
                    arg + 1
                )),
                _ => unsupported(format!("the function {name}")),
            });
        };
        if !is_known_range_fn(name) {
            return Err(unsupported(format!("the function {name}")));
        }
        let range = ms.range.as_millis() as i64;
        let at = t - offset_ms(&ms.vs.offset);
        let mut out = Vec::new();
        for s in self.range(&ms.vs, t, range) {
            let v = range_fn(name, &s.points, at - range, at, param);
            if let Some(v) = v {
                out.push((drop_name(s.labels), v));
            }
        }
        Ok(Value::Vector(out))
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value, EvalError> {
        let op = a.op.to_string();
        if !matches!(
            op.as_str(),
            "sum"
                | "avg"
                | "min"
                | "max"
                | "count"
                | "group"
                | "stddev"
                | "stdvar"
                | "quantile"
                | "topk"
                | "bottomk"
        ) {
            return Err(unsupported(format!("the aggregation {op}")));
        }
        let param = match &a.param {
            Some(p) => match self.eval(p, t)? {
                Value::Scalar(v) => Some(v),
                _ => {
                    return Err(EvalError::Execution(format!(
                        "{op}: the parameter must be a scalar"
                    )))
                }
            },
            None => None,
        };
        let input = match self.eval(&a.expr, t)? {
            Value::Vector(v) => v,
            _ => {
                return Err(EvalError::Execution(format!(
                    "{op}: needs an instant vector"
                )))
            }
        };
        // by (...) / without (...): the labels a vector is matched on; neither: one group.
        let key = |l: &PromLabels| -> PromLabels {
            match &a.modifier {
                Some(_) => signature(l, &a.modifier),
                None => PromLabels::new(),
            }
        };
        let mut groups: BTreeMap<PromLabels, Vec<(PromLabels, f64)>> = BTreeMap::new();
        for (l, v) in input {
            groups.entry(key(&l)).or_default().push((l, v));
        }
        let mut out = Vec::new();
        for (k, members) in groups {
            let vals: Vec<f64> = members.iter().map(|m| m.1).collect();
            let n = vals.len() as f64;
            let one = match op.as_str() {
                "sum" => Some(vals.iter().sum()),
                "avg" => Some(vals.iter().sum::<f64>() / n),
                "min" => Some(vals.iter().copied().fold(f64::NAN, nan_min)),
                "max" => Some(vals.iter().copied().fold(f64::NAN, nan_max)),
                "count" => Some(n),
                "group" => Some(1.0),
                "stddev" | "stdvar" => {
                    let mean = vals.iter().sum::<f64>() / n;
                    let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                    Some(if op == "stddev" { var.sqrt() } else { var })
                }
                "quantile" => Some(quantile(param.unwrap_or(f64::NAN), vals.clone())),
                "topk" | "bottomk" => None,
                other => return Err(unsupported(format!("the aggregation {other}"))),
            };
            match one {
                Some(v) => out.push((k, v)),
                None => {
                    let k_n = param.unwrap_or(0.0);
                    if k_n < 1.0 {
                        continue;
                    }
                    let mut m = members;
                    m.sort_by(|a, b| {
                        let o = a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal);
                        if op == "topk" {
                            o.reverse()
                        } else {
                            o
                        }
                    });
                    out.extend(m.into_iter().take(k_n as usize));
                }
            }
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, EvalError> {
        let op = b.op.to_string();
        let is_cmp = b.op.is_comparison_operator();
        let is_set = b.op.is_set_operator();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        if let Some(m) = &b.modifier {
            if matches!(
                m.card,
                VectorMatchCardinality::ManyToOne(_) | VectorMatchCardinality::OneToMany(_)
            ) {
                return Err(unsupported("group_left/group_right (many-to-one matching)"));
            }
        }
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let v = apply(&op, x, y)?;
                Ok(Value::Scalar(if is_cmp { bool_of(v) } else { v }))
            }
            (Value::Vector(v), Value::Scalar(y)) => {
                vector_scalar(is_cmp, return_bool, v, |x| apply(&op, x, y))
            }
            (Value::Scalar(x), Value::Vector(v)) => {
                vector_scalar(is_cmp, return_bool, v, |y| apply(&op, x, y))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                if is_set {
                    Ok(Value::Vector(set_op(&op, l, r, &matching)))
                } else {
                    vector_vector(&op, is_cmp, return_bool, l, r, &matching)
                }
            }
            _ => Err(EvalError::Execution(format!(
                "the operator {op} needs scalars or instant vectors"
            ))),
        }
    }
}

fn strip_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip_parens(&p.expr),
        other => other,
    }
}

fn is_known_range_fn(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "irate"
            | "increase"
            | "delta"
            | "idelta"
            | "deriv"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "last_over_time"
            | "present_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "quantile_over_time"
            | "changes"
            | "resets"
    )
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b < a {
        b
    } else {
        a
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// Prometheus' quantile: linear interpolation between the closest ranks.
pub fn quantile(q: f64, mut vals: Vec<f64>) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0) as usize;
    let hi = (lo + 1).min(vals.len() - 1);
    let w = rank - rank.floor();
    vals[lo] * (1.0 - w) + vals[hi] * w
}

/// A function of the samples of one series in `(from, to]` (ms).
pub fn range_fn(
    name: &str,
    pts: &[(i64, f64)],
    from: i64,
    to: i64,
    param: Option<f64>,
) -> Option<f64> {
    let vals = || pts.iter().map(|p| p.1);
    let n = pts.len() as f64;
    match name {
        "rate" => extrapolated(pts, from, to, true, true),
        "increase" => extrapolated(pts, from, to, true, false),
        "delta" => extrapolated(pts, from, to, false, false),
        "irate" | "idelta" => {
            let [.., (t0, v0), (t1, v1)] = pts else {
                return None;
            };
            let mut d = v1 - v0;
            if name == "irate" {
                if v1 < v0 {
                    d = *v1; // a counter reset
                }
                Some(d / ((t1 - t0) as f64 / 1000.0))
            } else {
                Some(d)
            }
        }
        "deriv" => {
            if pts.len() < 2 {
                return None;
            }
            // Least squares slope per second, times relative to the first sample.
            let t0 = pts[0].0;
            let xs: Vec<f64> = pts.iter().map(|p| (p.0 - t0) as f64 / 1000.0).collect();
            let mx = xs.iter().sum::<f64>() / n;
            let my = vals().sum::<f64>() / n;
            let cov: f64 = xs
                .iter()
                .zip(vals())
                .map(|(x, y)| (x - mx) * (y - my))
                .sum();
            let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
            Some(cov / var)
        }
        "avg_over_time" => Some(vals().sum::<f64>() / n),
        "min_over_time" => Some(vals().fold(f64::NAN, nan_min)),
        "max_over_time" => Some(vals().fold(f64::NAN, nan_max)),
        "sum_over_time" => Some(vals().sum()),
        "count_over_time" => Some(n),
        "last_over_time" => pts.last().map(|p| p.1),
        "present_over_time" => Some(1.0),
        "stddev_over_time" | "stdvar_over_time" => {
            let mean = vals().sum::<f64>() / n;
            let var = vals().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            Some(if name == "stddev_over_time" {
                var.sqrt()
            } else {
                var
            })
        }
        "quantile_over_time" => Some(quantile(param.unwrap_or(f64::NAN), vals().collect())),
        "changes" => Some(pts.windows(2).filter(|w| w[0].1 != w[1].1).count() as f64),
        "resets" => Some(pts.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        _ => None,
    }
}

/// Prometheus' extrapolated rate/increase/delta over the window `(from, to]`.
fn extrapolated(
    pts: &[(i64, f64)],
    from: i64,
    to: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let (first, last) = (pts[0], pts[pts.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        for w in pts.windows(2) {
            if w[1].1 < w[0].1 {
                result += w[0].1;
            }
        }
    }
    let secs = |ms: i64| ms as f64 / 1000.0;
    let sampled = secs(last.0 - first.0);
    let mut to_start = secs(first.0 - from);
    let to_end = secs(to - last.0);
    let avg_step = sampled / (pts.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    let mut v = result * (interval / sampled);
    if per_second {
        v /= secs(to - from);
    }
    Some(v)
}

fn bool_of(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v
    }
}

/// `x op y`. For comparisons: 1 when true, NaN when false (the caller filters or
/// turns it into 0 with `bool`).
fn apply(op: &str, x: f64, y: f64) -> Result<f64, EvalError> {
    let cmp = |b: bool| if b { 1.0 } else { f64::NAN };
    Ok(match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        "%" => x % y,
        "^" => x.powf(y),
        "atan2" => x.atan2(y),
        "==" => cmp(x == y),
        "!=" => cmp(x != y),
        ">" => cmp(x > y),
        "<" => cmp(x < y),
        ">=" => cmp(x >= y),
        "<=" => cmp(x <= y),
        other => return Err(unsupported(format!("the operator {other} here"))),
    })
}

fn vector_scalar(
    is_cmp: bool,
    return_bool: bool,
    v: Vec<(PromLabels, f64)>,
    f: impl Fn(f64) -> Result<f64, EvalError>,
) -> Result<Value, EvalError> {
    let mut out = Vec::new();
    for (l, x) in v {
        let r = f(x)?;
        if !is_cmp {
            out.push((drop_name(l), r));
        } else if return_bool {
            out.push((drop_name(l), if r.is_nan() { 0.0 } else { 1.0 }));
        } else if !r.is_nan() {
            // A filter keeps the vector's own sample.
            out.push((l, x));
        }
    }
    Ok(Value::Vector(out))
}

/// The labels two samples are matched on.
fn signature(l: &PromLabels, matching: &Option<LabelModifier>) -> PromLabels {
    match matching {
        Some(LabelModifier::Include(on)) => l
            .iter()
            .filter(|(k, _)| on.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(ign)) => l
            .iter()
            .filter(|(k, _)| *k != NAME_LABEL && !ign.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => drop_name(l.clone()),
    }
}

fn vector_vector(
    op: &str,
    is_cmp: bool,
    return_bool: bool,
    l: Vec<(PromLabels, f64)>,
    r: Vec<(PromLabels, f64)>,
    matching: &Option<LabelModifier>,
) -> Result<Value, EvalError> {
    let mut right: HashMap<PromLabels, f64> = HashMap::new();
    for (labels, v) in r {
        if right.insert(signature(&labels, matching), v).is_some() {
            return Err(EvalError::Execution(format!(
                "many-to-many matching not allowed: the right side of {op} has several series for one label set"
            )));
        }
    }
    let mut seen: std::collections::HashSet<PromLabels> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (labels, x) in l {
        let sig = signature(&labels, matching);
        let Some(&y) = right.get(&sig) else { continue };
        if !seen.insert(sig.clone()) {
            return Err(EvalError::Execution(format!(
                "many-to-many matching not allowed: the left side of {op} has several series for one label set"
            )));
        }
        let v = apply(op, x, y)?;
        let result_labels = || match matching {
            Some(LabelModifier::Include(_)) => sig.clone(),
            _ => signature(&labels, matching),
        };
        if !is_cmp {
            out.push((result_labels(), v));
        } else if return_bool {
            out.push((result_labels(), if v.is_nan() { 0.0 } else { 1.0 }));
        } else if !v.is_nan() {
            out.push((labels, x));
        }
    }
    Ok(Value::Vector(out))
}

fn set_op(
    op: &str,
    l: Vec<(PromLabels, f64)>,
    r: Vec<(PromLabels, f64)>,
    matching: &Option<LabelModifier>,
) -> Vec<(PromLabels, f64)> {
    let right: std::collections::HashSet<PromLabels> = r
        .iter()
        .map(|(labels, _)| signature(labels, matching))
        .collect();
    match op {
        "and" => l
            .into_iter()
            .filter(|(labels, _)| right.contains(&signature(labels, matching)))
            .collect(),
        "unless" => l
            .into_iter()
            .filter(|(labels, _)| !right.contains(&signature(labels, matching)))
            .collect(),
        _ => {
            let left: std::collections::HashSet<PromLabels> = l
                .iter()
                .map(|(labels, _)| signature(labels, matching))
                .collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|(labels, _)| !left.contains(&signature(labels, matching))),
            );
            out
        }
    }
}

#[cfg(test)]
mod tests;
