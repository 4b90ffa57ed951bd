"""The CmdStan backends.

* `program`: a compiled Stan program (compiling once per host, `stanc --info`, identity,
  remote hosts): the part every CmdStan-based backend shares;
* `sample`: NUTS through cmdstanpy's `sample` (``[backend] type = "cmdstan"``, the default;
  its settings are cmdstanpy's arguments in ``[backend]``, or sbc 0.1's ``[sampler]``);
* `variational`: ADVI through cmdstanpy's `variational` (``type = "cmdstan-variational"``);
* `install`: finding or provisioning CmdStan itself (`sbc setup`), with `build` for the
  offline fallback (CmdStan built from its source on PyPI);
* `remote`: getting the model ready on a dask worker host.

Importing this package imports neither cmdstanpy nor any of these modules.
"""
