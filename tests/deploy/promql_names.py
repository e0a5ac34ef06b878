"""Metric names that Grafana dashboards and Prometheus rule files ask for.

    required_names(dashboards, rule_files) -> {metric name: [where it is used, ...]}

Every PromQL expression of a dashboard (panel targets, nested rows, the query of a
template variable) and of a rule file (recording and alerting rules) is reduced to the
metric names it selects; a name that a recording rule of the files defines is replaced by
the names of that rule's expression, so what remains must come from a scrape. Histogram
series (_bucket, _sum, _count) are named as the scrape names them.
"""

import json
import re

import yaml

# Series that Prometheus makes itself for every target, not scraped from /metrics.
PROMETHEUS_BUILTIN = re.compile(r"^(up|scrape_[a-z_]+|ALERTS|ALERTS_FOR_STATE)$")

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "offset", "bool", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')


def expr_names(expr):
    """Returns the set of metric names that a PromQL expression selects."""
    names = set()
    for block in _MATCHERS.findall(expr):
        names.update(_NAME_MATCHER.findall(block))
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for m in _IDENTIFIER.finditer(text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue  # an operator, or a function or aggregation being called
        names.add(word)
    return names


def _label_values_metric(query):
    """Returns the metric of a Grafana label_values(metric, label) query, or None."""
    m = re.match(r"\s*label_values\s*\(\s*([A-Za-z_:][\w:]*)\s*,", query)
    return m.group(1) if m else None


def dashboard_exprs(dashboard):
    """Yields (where, expr) for every PromQL expression of a Grafana dashboard."""
    title = dashboard.get("title", "?")

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield "%s / %s" % (title, p.get("title", "?")), t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        metric = _label_values_metric(q or "")
        if metric:
            yield "%s / variable %s" % (title, v.get("name")), metric


def rule_exprs(rules):
    """Returns ({recorded name: expr}, [(where, expr)]) of a Prometheus rule file."""
    recorded, used = {}, []
    for group in rules.get("groups", []):
        for r in group.get("rules", []):
            if "record" in r:
                recorded[r["record"]] = r["expr"]
            used.append(("rule %s" % (r.get("record") or r.get("alert")), r["expr"]))
    return recorded, used


def required_names(dashboards, rule_files):
    """Returns {metric name: [where it is used]} for the files given (paths)."""
    recorded, used = {}, []
    for path in rule_files:
        with open(path) as f:
            rec, u = rule_exprs(yaml.safe_load(f))
        recorded.update(rec)
        used.extend(u)
    for path in dashboards:
        with open(path) as f:
            used.extend(dashboard_exprs(json.load(f)))

    required = {}

    def need(name, where, seen):
        if name in recorded:
            if name in seen:
                raise ValueError("recording rule %s refers to itself" % name)
            for n in expr_names(recorded[name]):
                need(n, "%s (through %s)" % (where, name), seen | {name})
        elif not PROMETHEUS_BUILTIN.match(name):
            required.setdefault(name, []).append(where)

    for where, expr in used:
        for name in expr_names(expr):
            need(name, where, frozenset())
    return required


def exposed_names(text):
    """Returns the metric names of a Prometheus text exposition (a /metrics body)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
