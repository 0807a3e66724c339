mod deploy;
mod distributed;
mod failures;
mod faults;
mod product;
mod refusals;
mod security;
mod serving;
