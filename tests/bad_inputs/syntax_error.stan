// A Stan program with a syntax error: a missing semicolon after `real unused`.
data {
  int<lower=1> N;
  int<lower=1> K;
  matrix[N, K] y;
}
parameters {
  vector[K] mu;
  real unused
}
model {
  mu ~ normal(0, 1);
}
