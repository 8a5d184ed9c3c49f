"""Placeholder ClientApp: Flower requires one in the app; the fleet's clients are native
`fieldtune fleet` SuperNodes that never run Python."""
from flwr.clientapp import ClientApp

app = ClientApp()
