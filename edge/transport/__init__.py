"""MQTT transport of the agent: the only package of the agent that imports paho."""
