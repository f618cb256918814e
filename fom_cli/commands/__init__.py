"""One module per sub-command of `fom`: its parser (`configure_parser`) and its `run(args)`."""
