"""localcluster/rectrain_local"""
