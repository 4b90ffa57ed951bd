// A Stan program with a semantic error: `sigma` is never declared.
data {
  int<lower=1> N;
  int<lower=1> K;
  matrix[N, K] y;
}
parameters {
  vector[K] mu;
}
model {
  mu ~ normal(0, 1);
  for (n in 1:N) y[n] ~ normal(mu', sigma);
}
