"""Root fixtures: real databases, brokers and loopback SMTP / WeCom servers."""

pytest_plugins = ["tests.support.services", "tests.support.servers", "tests.support.api"]
