//! Domain model, validation, score and the ports (with their AWS / Graph adapters) shared by every function.

pub mod activity;
pub mod api;
pub mod aws;
pub mod config;
pub mod consent;
pub mod contacts;
pub mod download;
pub mod enrichment;
pub mod graph;
pub mod jobs;
pub mod mailbox;
pub mod ports;
pub mod privacy;
pub mod problem;
pub mod results;
pub mod run;
pub mod schedule;
pub mod score;
pub mod scoring;
pub mod services;
pub mod store;
pub mod tables;
