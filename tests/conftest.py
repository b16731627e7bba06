"""Shared fixtures. Real parts only: each fixture module starts a real server
(the simulator over HTTP, a Kafka-protocol broker, Mosquitto, Home Assistant, nginx, the
stand-in for the Supervisor's services endpoint) and stops it."""

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.kafka",
    "tests.fixtures.mqtt",
    "tests.fixtures.homeassistant",
    "tests.fixtures.browser",
    "tests.fixtures.supervisor",
]
