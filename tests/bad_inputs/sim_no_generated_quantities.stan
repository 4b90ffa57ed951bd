// A "simulator" that forgot its generated quantities block: it draws nothing.
data {
  int<lower=1> N;
}
transformed data {
  real mu = 0;
}
