"""The Roadside agent: sources → inference → analytics → outbox → sealed MQTT."""
