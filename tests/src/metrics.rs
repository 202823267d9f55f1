//! Prometheus text scraped from a process's `GET /metrics`, for tests that assert on
//! what a node or a global master member counted.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context};
use reqwest::StatusCode;

/// One scrape: series (name plus labels, as written) to value.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    series: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut series = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("not a sample: {line:?}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().with_context(|| format!("value of {line:?}"))?,
            };
            series.insert(name.to_owned(), value);
        }
        Ok(Self { series })
    }

    /// Metric names, labels left out.
    pub fn names(&self) -> BTreeSet<String> {
        (self.series.keys())
            .map(|s| s.split('{').next().unwrap_or(s).to_owned())
            .collect()
    }

    /// The sum over every series of `name` whose labels contain each of `labels`
    /// (written as in the text: `role="leader"`); `None` when there is no such series.
    pub fn sum(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let matching: Vec<f64> = (self.series.iter())
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

/// `GET http://<addr>/metrics`, parsed.
pub async fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    let response = crate::rest::http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "{}", response.status());
    Scrape::parse(&response.text().await?)
}
