"""api/rectrain_api"""
