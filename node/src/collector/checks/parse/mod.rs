//! Pure parsers of what checks read: no I/O, fixture-tested, never panic on any input.
pub mod exposition;
pub mod geoip;
pub mod jsonmerge;
pub mod logtail;
pub mod nagios;
pub mod nginx;
